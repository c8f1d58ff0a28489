"""The realistic decoder's trainer (vqvae/realistic.py) on tiny synthetic slices."""
import json
from contextlib import nullcontext

import pytest
import torch

from train import realistic, vqvae
from vqvae.generation import SliceCNN
from vqvae.hub import load_model
from vqvae.model import VQVAE
from vqvae.realistic import base_images
from vqvae.testing import TINY_VQVAE

TINY_HEAD = ["--detail-channels", "4", "--detail-blocks", "1", "--detail-noise", "2", "--disc-width", "8",
             "--crop", "32", "--batch-size", "4", "--eval-images", "2", "--no-progress", "--threads", "1",
             "--precision", "fp32"]


@pytest.fixture(scope="module")
def faithful(oasis_like, tmp_path_factory):
    run = tmp_path_factory.mktemp("faithful")
    vqvae.main(["--data", str(oasis_like), "--out", str(run), "--epochs", "1", *TINY_VQVAE])
    return run / "model"


def test_the_discriminator_judges_unit_images_as_the_classifier_judges_uint8():
    torch.manual_seed(0)
    net = SliceCNN(num_classes=1, width=8, input_pool=1).eval()
    pixels = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    assert torch.allclose(net.judge(pixels.float() / 255), net(pixels), atol=1e-6)
    unit = (pixels.float() / 255).requires_grad_(True)
    net.judge(unit).sum().backward()
    assert unit.grad.abs().sum() > 0  # differentiable in the image: the head learns through it


def test_realistic_training_keeps_the_codes_trains_only_the_head_and_resumes_exactly(faithful, oasis_like, tmp_path):
    settings = ["--data", str(oasis_like), "--init", str(faithful), *TINY_HEAD]
    whole, split = tmp_path / "whole", tmp_path / "split"
    realistic.main([*settings, "--out", str(whole), "--epochs", "2"])
    realistic.main([*settings, "--out", str(split), "--epochs", "1"])
    realistic.main([*settings, "--out", str(split), "--epochs", "2", "--resume"])
    start, trained = load_model(VQVAE, faithful), load_model(VQVAE, whole / "model")
    before, after = start.state_dict(), trained.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # all but the head frozen
    assert any(after[name].abs().sum() > 0 for name in after if name.startswith("decoder.detail.out"))
    images = torch.rand(3, 1, 64, 64)
    assert torch.equal(start.encode(images), trained.encode(images))  # every prior stays valid
    assert not torch.equal(start.decode(start.encode(images)), trained.decode(trained.encode(images)))
    state = torch.load(whole / "checkpoint.pt", weights_only=True)
    assert set(state["companions"]) == {"head", "discriminator", "disc_optimizer"}  # the saved model: the VQ-VAE only
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert any({"adv", "recon", "d_loss"} <= set(r) for r in records if r["kind"] == "train")
    a, b = (load_model(VQVAE, run / "model").state_dict() for run in (whole, split))
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_base_images_are_the_frozen_decoders_clamped_images(faithful):
    model = load_model(VQVAE, faithful)
    pixels = torch.randint(0, 256, (5, 1, 64, 64), dtype=torch.uint8)
    bases = base_images(model, pixels, batch_size=2)
    assert bases.dtype == torch.float16
    expected = model.decode(model.encode(pixels.float() / 255))
    assert torch.allclose(bases.float(), expected, atol=1e-3)  # float16 storage


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_the_saved_head_is_the_moving_average_of_the_trained_one(faithful, oasis_like, tmp_path, ema):
    run = tmp_path / "run"
    realistic.main(["--data", str(oasis_like), "--init", str(faithful), *TINY_HEAD, "--out", str(run),
                    "--epochs", "1", "--ema", str(ema)])
    saved = load_model(VQVAE, run / "model").decoder.detail.state_dict()
    live = torch.load(run / "checkpoint.pt", weights_only=True)["companions"]["head"]
    same = all(torch.equal(saved[name], live[name]) for name in live)
    assert same == (ema == 0.0)


def test_precision_auto_times_the_head_and_keeps_the_faster(faithful, oasis_like, tmp_path, capsys):
    settings = [arg for arg in TINY_HEAD if arg not in ("--precision", "fp32")]
    realistic.main(["--data", str(oasis_like), "--init", str(faithful), *settings, "--out", str(tmp_path / "run"),
                    "--epochs", "1"])
    assert "precision auto: one step takes fp32" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_prior(faithful, tmp_path_factory):
    """An untrained prior on the faithful model's 16 codes (with random position embeddings, so
    samples at different slice positions differ)."""
    from vqvae.prior import GatedPixelCNN
    torch.manual_seed(1)
    grid = 256 // load_model(VQVAE, faithful).downsample
    prior = GatedPixelCNN(num_codes=16, channels=8, layers=2, grid_size=grid)
    for layer in prior.layers:
        torch.nn.init.normal_(layer.condition.weight, std=1.0)
    folder = tmp_path_factory.mktemp("prior") / "prior"
    prior.save_pretrained(folder)
    return folder


def test_training_on_prior_samples_too_resumes_exactly_and_changes_the_head(faithful, tiny_prior, oasis_like,
                                                                             tmp_path):
    settings = ["--data", str(oasis_like), "--init", str(faithful), *TINY_HEAD, "--detail-highpass", "2.0"]
    with_samples = [*settings, "--prior", str(tiny_prior), "--samples", "6", "--sample-share", "0.5"]
    whole, split, plain = tmp_path / "whole", tmp_path / "split", tmp_path / "plain"
    realistic.main([*with_samples, "--out", str(whole), "--epochs", "2"])
    realistic.main([*with_samples, "--out", str(split), "--epochs", "1"])
    realistic.main([*with_samples, "--out", str(split), "--epochs", "2", "--resume"])
    realistic.main([*settings, "--out", str(plain), "--epochs", "2"])
    a, b, c = (load_model(VQVAE, run / "model").state_dict() for run in (whole, split, plain))
    assert all(torch.equal(a[name], b[name]) for name in a)  # the samples are drawn alike on resume
    assert not all(torch.equal(a[name], c[name]) for name in a)  # and they do reach the head
    assert load_model(VQVAE, whole / "model").decoder.detail.highpass == 2.0  # saved in its config


def test_a_step_on_samples_fits_only_the_paired_crops():
    from vqvae.model import DetailHead
    from vqvae.realistic import RealisticTraining, reconstruction_loss, realistic_step
    torch.manual_seed(0)
    head = DetailHead(1, 4, 1, 2)  # zero output convolution: the identity at the first step
    real, base, sampled = torch.rand(4, 1, 32, 32), torch.rand(3, 1, 32, 32), torch.rand(1, 1, 32, 32)
    config = RealisticTraining(data="", out="", init="", epochs=1, recon_sigma=1.0)
    discriminator = SliceCNN(num_classes=1, width=8, input_pool=1)
    losses = realistic_step(head, torch.optim.SGD(head.parameters(), lr=0.0), real, base, config, nullcontext,
                            discriminator, torch.optim.SGD(discriminator.parameters(), lr=0.0), sampled)
    expected = reconstruction_loss(base, real[:3], 1.0)
    assert losses["recon"] == pytest.approx(float(expected), rel=1e-5)
    assert {"adv", "d_loss"} <= set(losses)


@pytest.mark.parametrize("branch", [[], ["--detail-mid-channels", "8", "--detail-mid-blocks", "1"]])
def test_a_realistic_model_as_init_starts_the_head_where_it_was(faithful, oasis_like, tmp_path, branch):
    first, second = tmp_path / "first", tmp_path / "second"
    realistic.main(["--data", str(oasis_like), "--init", str(faithful), *TINY_HEAD, "--out", str(first), "--epochs", "1"])
    realistic.main(["--data", str(oasis_like), "--init", str(first / "model"), *TINY_HEAD, *branch, "--out",
                    str(second), "--epochs", "1", "--lr", "0", "--ema", "0"])  # no update: the head as it started
    a, b = (load_model(VQVAE, run / "model") for run in (first, second))
    assert any(v.abs().sum() > 0 for name, v in a.state_dict().items() if name.startswith("decoder.detail.out"))
    assert all(torch.equal(v, b.state_dict()[name]) for name, v in a.state_dict().items())
    assert (b.decoder.detail.mid is not None) == bool(branch)  # a new branch (saved in config.json) ...
    codes = torch.randint(0, a.num_codes, (2, 4, 4))
    assert torch.equal(a.eval().decode(codes), b.eval().decode(codes))  # ... that starts at zero


def test_the_histogram_loss_ignores_arrangement_and_sees_intensities():
    from vqvae.realistic import histogram_loss
    torch.manual_seed(0)
    real = torch.rand(2, 1, 16, 16)
    shuffled = real.flatten(1)[:, torch.randperm(256)].reshape(real.shape)
    assert float(histogram_loss(shuffled, real)) == pytest.approx(0.0, abs=1e-7)  # any arrangement is real
    assert float(histogram_loss(real + 0.1, real)) == pytest.approx(0.1, rel=1e-4)  # a shift is its size
    bright = real.clone()
    bright[:, :, 0, 0] = 1.5  # above the clamp: still pulled down, not lost to the clamp's zero gradient
    bright.requires_grad_(True)
    histogram_loss(bright, real).backward()
    assert bright.grad[:, :, 0, 0].gt(0).all()


def test_the_detail_histogram_sees_spikes_not_coarse_intensity():
    from vqvae.realistic import detail_band, histogram_loss
    torch.manual_seed(0)
    real = torch.rand(2, 1, 32, 32)
    coarse = real + torch.linspace(0, 0.3, 32).view(1, 1, 1, 32)  # a ramp: coarse, no detail of its own
    assert float(histogram_loss(detail_band(coarse), detail_band(real))) < 1e-3
    spiky = real.clone()
    spiky[:, :, 8::8, 8::8] += 0.8  # isolated bright pixels: the tail a classifier finds
    spiky.requires_grad_(True)
    loss = histogram_loss(detail_band(spiky), detail_band(real))
    assert loss.item() > 10 * float(histogram_loss(detail_band(coarse), detail_band(real)))
    loss.backward()
    assert spiky.grad[:, :, 8, 8].gt(0).all()  # each spike is pulled down


def test_the_texture_loss_sees_orientation_and_amount_of_detail_not_its_phase():
    from vqvae.realistic import texture_loss
    rows = torch.arange(32.0).view(1, 1, 32, 1).expand(2, 1, 32, 32)
    horizontal = 0.5 + 0.1 * torch.sin(rows * torch.pi / 2)  # stripes of period 4: whole periods in a patch
    shifted = 0.5 + 0.1 * torch.sin((rows + 1) * torch.pi / 2)  # the same texture, another phase
    vertical = horizontal.transpose(-1, -2)  # the same amount of detail, turned
    assert float(texture_loss(shifted, horizontal)) < 2e-3  # (the reflected edges differ a little)
    assert float(texture_loss(vertical, horizontal)) > 10 * float(texture_loss(shifted, horizontal))
    stronger = 0.5 + 0.2 * torch.sin(rows * torch.pi / 2)
    assert float(texture_loss(stronger, horizontal)) > 10 * float(texture_loss(shifted, horizontal))  # twice as strong
    output = horizontal.clone().requires_grad_(True)
    texture_loss(output, vertical).backward()
    assert output.grad.abs().sum() > 0


@pytest.mark.parametrize("weight_option, logged", [("band_weight", "band"), ("histogram_weight", "hist"),
                                                   ("detail_histogram_weight", "detail_hist"),
                                                   ("texture_weight", "texture"), ("energy_weight", "energy")])
def test_a_step_with_a_statistics_loss_adds_it_on_the_paired_crops(weight_option, logged):
    from vqvae.model import DetailHead
    from vqvae.realistic import (RealisticTraining, band_loss, detail_band, energy_score, histogram_loss,
                                 realistic_step, texture_loss)
    torch.manual_seed(0)
    head = DetailHead(1, 4, 1, 2)
    real, base, sampled = torch.rand(4, 1, 32, 32), torch.rand(3, 1, 32, 32) ** 2, torch.rand(1, 1, 32, 32)
    config = RealisticTraining(data="", out="", init="", epochs=1, recon_sigma=1.0, **{weight_option: 5.0})
    losses = realistic_step(head, torch.optim.SGD(head.parameters(), lr=0.0), real, base, config, nullcontext,
                            sampled=sampled)
    expected = {"band": lambda: band_loss(base, real[:3], 1.0), "hist": lambda: histogram_loss(base, real[:3]),
                "detail_hist": lambda: histogram_loss(detail_band(base), detail_band(real[:3])),
                "texture": lambda: texture_loss(base, real[:3]),
                "energy": lambda: energy_score(base, base, real[:3], 8)}[logged]()  # the identity head: output = base
    assert losses[logged] == pytest.approx(float(expected), rel=1e-5)
    assert losses["loss"] == pytest.approx(config.recon_weight * losses["recon"] + 5.0 * float(expected), rel=1e-5)


def test_the_band_loss_sees_detail_out_of_place_and_not_coarse_intensity():
    from vqvae.realistic import band_loss
    rows = torch.arange(32.0).view(1, 1, 32, 1).expand(2, 1, 32, 32)
    edges = 0.5 + 0.2 * torch.sin(rows * torch.pi / 2)  # fine stripes
    assert float(band_loss(edges + 0.1, edges, 2.0)) < 1e-5  # brighter, the same detail: nothing to pay
    moved = 0.5 + 0.2 * torch.sin((rows + 2) * torch.pi / 2)  # the same detail two pixels off: the most
    assert float(band_loss(moved, edges, 2.0)) > 0.2
    output = edges.clone().requires_grad_(True)
    band_loss(output, moved, 2.0).backward()
    assert output.grad.abs().sum() > 0


def test_the_energy_score_prefers_draws_from_the_real_distribution_to_its_mean():
    from vqvae.realistic import energy_score
    torch.manual_seed(0)
    real = 0.5 + 0.1 * torch.randn(64, 1, 32, 32)  # detail that no image fixes: only its spread is knowable
    mean = torch.full_like(real, 0.5)  # the best an L1 or L2 loss can do: the faithful decoder's blur
    right = 0.5 + 0.1 * torch.randn(2, *real.shape)  # two independent draws of the right spread
    wide = 0.5 + 0.3 * torch.randn(2, *real.shape)
    scores = [float(energy_score(a, b, real)) for a, b in ((mean, mean), right, wide)]
    assert scores[1] < 0.8 * scores[0] and scores[1] < 0.8 * scores[2]
    assert float(energy_score(real, real, real)) < 1e-4  # a draw that is the real patch itself costs nothing
    first = right[0].clone().requires_grad_(True)
    energy_score(first, right[1], real).backward()
    assert first.grad.abs().sum() > 0


def test_without_the_adversarial_loss_no_discriminator_trains(faithful, oasis_like, tmp_path):
    settings = ["--data", str(oasis_like), "--init", str(faithful), *TINY_HEAD, "--epochs", "1",
                "--adversarial-weight", "0", "--energy-weight", "1", "--energy-patch", "4"]
    realistic.main([*settings, "--out", str(tmp_path / "run")])
    run = tmp_path / "run"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [entry for entry in logged if "energy" in entry]
    assert steps and not any("adv" in entry for entry in steps)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert set(checkpoint["companions"]) == {"head"}  # no discriminator was built or saved
    trained = load_model(VQVAE, run / "model").decoder.detail.state_dict()
    assert any(name.startswith("out.") and trained[name].abs().sum() > 0 for name in trained)  # the head moved


@pytest.mark.parametrize("settings, named", [({"energy_patch": 0}, "--energy-patch"),
                                             ({"adversarial_weight": -1.0}, "--adversarial-weight"),
                                             ({"adversarial_weight": 0.0, "prior": "p", "sample_share": 0.25},
                                              "--sample-share")])
def test_bad_energy_settings_are_refused_with_the_option_named(settings, named):
    from vqvae.realistic import RealisticTraining
    with pytest.raises(ValueError, match=named):
        RealisticTraining(data="", out="", init="", epochs=1, **settings)


def test_the_r1_penalty_is_the_squared_input_gradient_of_the_real_logits():
    from vqvae.realistic import r1_penalty
    real = torch.rand(3, 1, 8, 8, requires_grad=True)
    weights = torch.randn(1, 1, 8, 8)
    logits = (real * weights).sum(dim=(1, 2, 3)) * 2.0  # d logit / d crop = 2 * weights for every crop
    assert float(r1_penalty(logits, real)) == pytest.approx(float((2 * weights).square().sum()), rel=1e-5)


def test_a_step_with_r1_trains_the_discriminator_towards_a_flatter_logit():
    from vqvae.generation import SliceCNN
    from vqvae.model import DetailHead
    from vqvae.realistic import RealisticTraining, r1_penalty, realistic_step
    torch.manual_seed(0)
    real, base = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32) ** 2

    def run(gamma):
        torch.manual_seed(1)
        head, disc = DetailHead(1, 4, 1, 2), SliceCNN(num_classes=1, width=4, input_pool=1)
        config = RealisticTraining(data="", out="", init="", epochs=1, recon_sigma=1.0, r1_gamma=gamma)
        losses = realistic_step(head, torch.optim.SGD(head.parameters(), lr=0.0), real, base, config, nullcontext,
                                disc, torch.optim.SGD(disc.parameters(), lr=1e-3))
        shown = real.clone().requires_grad_(True)  # judged as in a step: beside the (identity) head's crops
        return losses, r1_penalty(disc.judge(torch.cat([shown, base]))[:len(real)], shown).item()

    plain, with_r1 = run(0.0), run(10.0)
    assert "r1" not in plain[0] and with_r1[0]["r1"] > 0
    assert with_r1[1] < plain[1]  # the penalised step left the logit flatter around real crops


def test_restarts_are_staggered_seeded_and_clear_the_adam_state():
    from vqvae.realistic import RealisticTraining, restart_discriminators
    config = RealisticTraining(data="", out="", init="", epochs=1, disc_width=4, discriminators=2, disc_reset_steps=4)
    judges = [SliceCNN(num_classes=1, width=4, input_pool=1) for _ in range(2)]
    optimizers = [torch.optim.Adam(judge.parameters()) for judge in judges]
    for judge, optimizer in zip(judges, optimizers):
        judge(torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)).sum().backward()
        optimizer.step()
    schedule = {step: restart_discriminators(judges, optimizers, config, step) for step in range(9)}
    assert schedule == {0: [], 1: [], 2: [1], 3: [], 4: [0], 5: [], 6: [1], 7: [], 8: [0]}  # ages stay apart
    assert not optimizers[0].state and not optimizers[1].state  # Adam starts afresh with the weights
    state = torch.random.get_rng_state()
    restart_discriminators(judges, optimizers, config, 8)
    assert torch.equal(state, torch.random.get_rng_state())  # the run's random stream is left alone
    again = [SliceCNN(num_classes=1, width=4, input_pool=1) for _ in range(2)]
    restart_discriminators(again, [torch.optim.Adam(j.parameters()) for j in again], config, 8)
    assert all(torch.equal(a, b) for a, b in zip(judges[0].state_dict().values(), again[0].state_dict().values()))
    restart_discriminators(again, [torch.optim.Adam(j.parameters()) for j in again], config, 12)
    assert not torch.equal(judges[0].out.weight, again[0].out.weight)  # each restart its own draw
    assert restart_discriminators(judges, optimizers, RealisticTraining(data="", out="", init="", epochs=1), 8) == []


def test_several_discriminators_each_train_and_the_head_meets_their_mean():
    import copy
    from vqvae.model import DetailHead
    from vqvae.realistic import RealisticTraining, realistic_step
    torch.manual_seed(0)
    real, base = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32) ** 2
    config = RealisticTraining(data="", out="", init="", epochs=1, recon_sigma=1.0)
    head = DetailHead(1, 4, 1, 2)
    first, second = SliceCNN(num_classes=1, width=4, input_pool=1), SliceCNN(num_classes=1, width=4, input_pool=1)

    def step(judges):
        judges = copy.deepcopy(judges)
        torch.manual_seed(1)  # the head's noise
        losses = realistic_step(head, torch.optim.SGD(head.parameters(), lr=0.0), real, base, config, nullcontext,
                                judges, [torch.optim.SGD(j.parameters(), lr=1e-2) for j in judges])
        return losses, judges

    alone = [step([judge]) for judge in (first, second)]
    both, trained = step([first, second])
    assert both["adv"] == pytest.approx((alone[0][0]["adv"] + alone[1][0]["adv"]) / 2, rel=1e-5)
    assert both["d_loss"] == pytest.approx((alone[0][0]["d_loss"] + alone[1][0]["d_loss"]) / 2, rel=1e-5)
    for judge, (_, (trained_alone,)) in zip(trained, alone):  # each updated as if it were the only one
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(judge.parameters(), trained_alone.parameters()))
    assert not torch.equal(trained[0].out.weight, first.out.weight)


def test_restarted_discriminators_resume_exactly_and_are_checkpointed(faithful, oasis_like, tmp_path):
    settings = ["--data", str(oasis_like), "--init", str(faithful), *TINY_HEAD, "--discriminators", "2",
                "--disc-reset-steps", "2"]  # 3 steps an epoch: restarts on both sides of the resume
    whole, split, kept = tmp_path / "whole", tmp_path / "split", tmp_path / "kept"
    realistic.main([*settings, "--out", str(whole), "--epochs", "2"])
    realistic.main([*settings, "--out", str(split), "--epochs", "1"])
    realistic.main([*settings, "--out", str(split), "--epochs", "2", "--resume"])
    realistic.main([*settings[:-1], "0", "--out", str(kept), "--epochs", "2"])
    a, b, c = (load_model(VQVAE, run / "model").state_dict() for run in (whole, split, kept))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(a[name], c[name]) for name in a)  # the restarts reach the head
    state = torch.load(whole / "checkpoint.pt", weights_only=True)
    assert set(state["companions"]) == {"head", "discriminator", "disc_optimizer", "discriminator1",
                                        "disc_optimizer1"}


@pytest.mark.parametrize("bad", [["--discriminators", "0"], ["--disc-reset-steps", "-1"],
                                 ["--discriminators", "3", "--disc-reset-steps", "2"]])
def test_bad_discriminator_settings_are_refused_with_the_option_named(bad):
    from vqvae.realistic import RealisticTraining
    flags = dict(zip(bad[::2], bad[1::2]))
    settings = {name.lstrip("-").replace("-", "_"): int(value) for name, value in flags.items()}
    with pytest.raises(ValueError, match=bad[0]):
        RealisticTraining(data="", out="", init="", epochs=1, **settings)
