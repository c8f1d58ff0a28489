"""The train/ entry points end to end on small synthetic data, with tiny models."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train import evaluate, prior, push_to_hub, reconstruct, sample, vqvae
from tests.strict import import_or_skip
from vqvae.codes import load_codes
from vqvae.data import load_split
from vqvae import hub
from vqvae.hub import load_model, load_prior
from vqvae.metrics import evaluate_reconstructions
from vqvae.model import VQVAE
from vqvae.prior import GatedPixelCNN, nll_bits, unigram_bits
from vqvae.transformer import CodeTransformer

from vqvae.testing import TINY_VQVAE  # noqa: E402  (pins --precision fp32: runs compare bit for bit)

TINY_PRIOR = ["--channels", "8", "--layers", "2", "--batch-size", "4", "--no-progress", "--threads", "1",
              "--precision", "fp32"]


@pytest.fixture(scope="module")
def trained(oasis_like, tmp_path_factory):
    """A tiny VQ-VAE and prior trained for one epoch each on the synthetic slices."""
    runs = tmp_path_factory.mktemp("runs")
    vqvae.main(["--data", str(oasis_like), "--out", str(runs / "vqvae"), "--epochs", "1", *TINY_VQVAE])
    prior.main(["--vqvae", str(runs / "vqvae" / "model"), "--data", str(oasis_like),
                "--out", str(runs / "prior"), "--epochs", "1", *TINY_PRIOR])
    return runs


def test_vqvae_run_directory(trained, oasis_like):
    run = trained / "vqvae"
    assert (run / "model" / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()
    assert (run / "checkpoint.pt").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    # the logged evaluation is the saved model's, on the 4 validate slices (all of them: < 256)
    again = evaluate_reconstructions(load_model(VQVAE, run / "model"), load_split(oasis_like, "validate").images)
    assert final["ssim"] == pytest.approx(again["ssim"], abs=1e-4)
    assert final["usage"] == pytest.approx(again["usage"])


def test_decoder_only_fine_tune_keeps_the_codes(trained, oasis_like, tmp_path):
    start = VQVAE.from_pretrained(trained / "vqvae" / "model")
    vqvae.main(["--data", str(oasis_like), "--out", str(tmp_path / "decoder"), "--epochs", "1",
                "--init", str(trained / "vqvae" / "model"), "--decoder-only", "--refine-blocks", "1",
                *TINY_VQVAE])
    tuned = VQVAE.from_pretrained(tmp_path / "decoder" / "model")
    assert len(tuned.decoder.refine) > 0
    images = torch.rand(3, 1, 32, 32)
    assert torch.equal(start.encode(images), tuned.encode(images))  # a prior on these codes stays valid
    assert torch.equal(start.quantizer.codebook, tuned.quantizer.codebook)
    refined = [p for name, p in tuned.named_parameters() if ".refine." in name]
    assert any(p.abs().sum() > 0 for p in refined)  # the identity start was trained away from
    assert not torch.equal(start.decoder.net[0].weight, tuned.decoder.net[0].weight)


def test_encoder_only_fine_tune_keeps_the_decoder_and_codebook(trained, oasis_like, tmp_path):
    start = VQVAE.from_pretrained(trained / "vqvae" / "model")
    vqvae.main(["--data", str(oasis_like), "--out", str(tmp_path / "encoder"), "--epochs", "2", "--lr", "1e-2",
                "--init", str(trained / "vqvae" / "model"), "--encoder-only", *TINY_VQVAE])
    tuned = VQVAE.from_pretrained(tmp_path / "encoder" / "model")
    assert torch.equal(start.quantizer.codebook, tuned.quantizer.codebook)  # no moving-average updates
    assert all(torch.equal(a, b) for a, b in zip(start.decoder.state_dict().values(),
                                                  tuned.decoder.state_dict().values()))
    assert not torch.equal(start.encoder.net[0].weight, tuned.encoder.net[0].weight)
    validate = load_split(oasis_like, "validate")
    slices = validate.batch(torch.arange(len(validate.images)))
    assert not torch.equal(start.encode(slices), tuned.encode(slices))  # it chose other codes


def test_encoder_only_and_decoder_only_exclude_each_other(trained, oasis_like, tmp_path):
    with pytest.raises(SystemExit, match="exclude each other"):
        vqvae.main(["--data", str(oasis_like), "--out", str(tmp_path / "e"), "--epochs", "1", "--encoder-only",
                    "--decoder-only", "--init", str(trained / "vqvae" / "model"), *TINY_VQVAE])


def test_decoder_only_needs_a_trained_model(oasis_like, tmp_path):
    with pytest.raises(SystemExit, match="--decoder-only needs --init"):
        vqvae.main(["--data", str(oasis_like), "--out", str(tmp_path / "d"), "--epochs", "1", "--decoder-only",
                    *TINY_VQVAE])


def train_prior_briefly(trained, data, run, *extra):
    """One step of the prior trainer on the shared run's codes; -> the model directory."""
    run.mkdir(exist_ok=True)
    for split in ("train", "validate"):  # reuse the codes (with --resume they are not re-extracted)
        shutil.copy(trained / "prior" / f"codes_{split}.npz", run)
    prior.main(["--vqvae", str(trained / "vqvae" / "model"), "--data", str(data), "--out", str(run),
                "--epochs", "0.01", "--resume", *TINY_PRIOR, *extra])
    return run / "model"


def test_prior_init_from_a_prior_without_location_map(trained, oasis_like, tmp_path):
    def train_prior(run, *extra):
        return train_prior_briefly(trained, oasis_like, run, *extra)

    plain = train_prior(tmp_path / "plain", "--coordinates", "0")
    tuned_dir = train_prior(tmp_path / "located", "--init", str(plain), "--coordinates", "4")
    start, tuned = GatedPixelCNN.from_pretrained(plain), GatedPixelCNN.from_pretrained(tuned_dir)
    assert start.coordinate_map is None and tuned.coordinate_map.shape == (4, 32, 32)  # the code grid
    # one training step from the start's weights: they moved, but only a little
    assert not torch.equal(tuned.embedding.weight, start.embedding.weight)
    assert torch.allclose(tuned.embedding.weight, start.embedding.weight, atol=0.05)
    with pytest.raises(SystemExit, match="architecture differs"):
        train_prior(tmp_path / "wider", "--init", str(plain), "--channels", "16")


def test_global_context_priors_train_load_by_their_config_and_sample(trained, oasis_like, tmp_path):
    """Attention added to a trained prior (--init) and a transformer prior: each is loaded by
    ``load_prior`` as the class its config names, and train.sample draws from it."""
    plain = trained / "prior" / "model"
    attended = train_prior_briefly(trained, oasis_like, tmp_path / "attention", "--init", str(plain),
                                   "--attention-every", "1", "--attention-heads", "2")
    transformer = train_prior_briefly(trained, oasis_like, tmp_path / "transformer", "--architecture", "transformer",
                                      "--channels", "16", "--attention-heads", "2")
    assert isinstance(load_prior(attended), GatedPixelCNN) and len(load_prior(attended).attention) == 1
    assert isinstance(load_prior(transformer), CodeTransformer)
    for model in (attended, transformer):
        out = tmp_path / f"samples_{model.parent.name}"
        sample.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(model), "-n", "2",
                     "--out", str(out)])
        assert len(list(out.glob("sample_*.png"))) == 2
    for model, kind in ((attended, "with causal self-attention"), (transformer, "a causal transformer prior")):
        out = tmp_path / f"weights_{model.parent.name}"  # packaged for the Hub, loaded as the app does
        push_to_hub.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(model), "--out", str(out)])
        assert kind in (out / "README.md").read_text()
        assert type(hub.load_models(str(out), None).prior) is type(load_prior(model))
    with pytest.raises(SystemExit, match="--previous-slice needs"):
        train_prior_briefly(trained, oasis_like, tmp_path / "bad", "--architecture", "transformer",
                            "--previous-slice", "4")


def test_vqvae_resume_continues_from_checkpoint(trained, oasis_like, capsys, tmp_path):
    run = tmp_path / "vqvae"  # a copy: the shared run must keep matching the prior trained on it
    shutil.copytree(trained / "vqvae", run)
    vqvae.main(["--data", str(oasis_like), "--out", str(run), "--epochs", "2", "--resume", *TINY_VQVAE])
    assert "resumed from" in capsys.readouterr().out
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 6  # 12 images / batch 4 = 3 steps an epoch


def test_evaluate_json(trained, oasis_like, capsys):
    evaluate.main(["--model", str(trained / "vqvae" / "model"), "--data", str(oasis_like), "--json"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 4 and metrics["split"] == "validate"
    for key in ("ssim", "ssim_std", "ssim_min", "ssim_brain", "psnr", "mse", "usage", "perplexity"):
        assert isinstance(metrics[key], float)
    assert metrics["bits_per_pixel"] == pytest.approx(4 / 64)


def test_evaluate_and_reconstruct_with_searched_codes(trained, oasis_like, capsys, tmp_path):
    """--search-sweeps: the same slices from searched codes, never a lower SSIM than nearest."""
    model = ["--model", str(trained / "vqvae" / "model")]
    evaluate.main([*model, "--data", str(oasis_like), "--json"])
    nearest = json.loads(capsys.readouterr().out)
    evaluate.main([*model, "--data", str(oasis_like), "--json", "--search-sweeps", "1", "--search-candidates", "3"])
    searched = json.loads(capsys.readouterr().out)
    assert searched["search_sweeps"] == 1 and searched["search_candidates"] == 3 and nearest["search_sweeps"] == 0
    assert searched["ssim"] >= nearest["ssim"] - 1e-6 and searched["images"] == nearest["images"]
    reconstruct.main([*model, "--input", str(oasis_like / "keras_png_slices_validate"), "--out", str(tmp_path),
                      "--search-sweeps", "1", "--search-candidates", "3"])
    mean = float(capsys.readouterr().out.rsplit("mean SSIM ", 1)[1].rstrip(")\n"))
    assert mean == pytest.approx(searched["ssim"], abs=1e-3)  # one image at a time, the same search


def test_reconstruct_writes_same_named_pngs(trained, oasis_like, tmp_path):
    out = tmp_path / "rec"
    reconstruct.main(["--model", str(trained / "vqvae" / "model"),
                      "--input", str(oasis_like / "keras_png_slices_validate"), "--out", str(out)])
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (oasis_like / "keras_png_slices_validate").iterdir())
    with Image.open(out / names[0]) as image:
        assert image.mode == "L" and image.size == (256, 256)


def test_reconstruct_figure_rows(trained, oasis_like, tmp_path):
    reconstruct.main(["--model", str(trained / "vqvae" / "model"), "--figure", "2",
                      "--input", str(oasis_like / "keras_png_slices_validate"), "--out", str(tmp_path)])
    with Image.open(tmp_path / "figure.png") as figure:
        assert figure.mode == "RGB" and figure.size == (3 * 256, 2 * 256)


def test_codes_and_prior_baselines(trained):
    data = load_codes(trained / "prior" / "codes_validate.npz")
    assert data["codes"].shape == (4, 32, 32) and data["positions"].tolist() == [0, 1, 2, 3]
    records = [json.loads(line) for line in (trained / "prior" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert final["uniform_bits"] == pytest.approx(4.0)
    # the logged figures are those of the saved prior on the saved codes
    prior_model = load_model(GatedPixelCNN, trained / "prior" / "model")
    assert final["unigram_bits"] == pytest.approx(unigram_bits(data["codes"], 16))
    assert final["nll_bits"] == pytest.approx(nll_bits(prior_model, data["codes"], data["positions"]), rel=1e-5)


def test_sample_writes_pngs_and_grid(trained, tmp_path, monkeypatch):
    from vqvae.sampling import sample_codes
    sample.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                 "-n", "2", "--out", str(tmp_path), "--slice", "3", "--top-k", "4", "--seed", "1"])
    assert {p.name for p in tmp_path.iterdir()} == {"sample_000.png", "sample_001.png", "grid.png"}
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (256 * 2 + 2, 256)
    seen = []  # --guidance reaches the sampler (what it does is tests/test_sampling.py's)
    monkeypatch.setattr(sample, "sample_codes", lambda *a, **k: seen.append(k["guidance"]) or sample_codes(*a, **k))
    sample.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                 "-n", "2", "--out", str(tmp_path / "guided"), "--slice", "3", "--guidance", "4"])
    assert seen == [4.0] and (tmp_path / "guided" / "grid.png").is_file()
    with pytest.raises(SystemExit, match="guidance"):
        sample.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                     "--out", str(tmp_path / "bad"), "--slice", "3", "--guidance", "-1"])


def test_sample_decodes_the_same_codes_with_a_second_decoder(trained, tmp_path):
    """decoders.png: the faithful decoding on top, the other decoder's below, same samples."""
    faithful = load_model(VQVAE, trained / "vqvae" / "model")
    other = VQVAE(**{**json.loads((trained / "vqvae" / "model" / "config.json").read_text()), "texture_channels": 4})
    other.load_state_dict(faithful.state_dict(), strict=False)
    torch.nn.init.normal_(other.decoder.texture.out[1].weight, std=0.1)  # so the two rows differ
    other.save_pretrained(tmp_path / "other")
    sample.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                 "-n", "3", "--out", str(tmp_path / "out"), "--also-decoder", str(tmp_path / "other")])
    figure = np.asarray(Image.open(tmp_path / "out" / "decoders.png"))
    first = np.asarray(Image.open(tmp_path / "out" / "sample_000.png"))
    assert figure.shape == (256 * 2 + 2, 256 * 3 + 4) and np.array_equal(figure[:256, :256], first)
    assert not np.array_equal(figure[:256], figure[258:])
    torch.nn.init.normal_(other.encoder.net[0].weight)  # another encoder: codes that are not the prior's
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit, match="encoder or codebook differs"):
        sample.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                     "-n", "1", "--out", str(tmp_path / "out2"), "--also-decoder", str(tmp_path / "other")])


def test_sample_grid_has_one_row_per_slice_position(trained, tmp_path):
    sample.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                 "-n", "2", "--out", str(tmp_path), "--slice", "0", "2", "3"])
    assert len(list(tmp_path.glob("sample_*.png"))) == 6
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (256 * 2 + 2, 256 * 3 + 2 * 2)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("args, message", [
    (["train.evaluate", "--model", "/no/such/model", "--data", "."], "not a model directory"),
    (["train.vqvae", "--data", "/no/such/data", "--out", "/tmp/x", "--epochs", "1"], "data folder not found"),
    (["train.vqvae", "--data", ".", "--out", "/tmp/x"], "--minutes and/or --epochs"),
    (["train.evaluate_generation", "--vqvae", "m", "--prior", "p", "--data", ".", "--bands", "1,-2"],
     "blur sigmas must be positive"),
    (["train.evaluate_generation", "--vqvae", "m", "--prior", "p", "--data", ".", "--bands", "1,two"],
     "expected comma-separated numbers"),
])
def test_bad_paths_exit_with_one_line_reason(args, message):
    result = run_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unreadable_image_is_named(trained, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_cli("train.reconstruct", "--model", str(trained / "vqvae" / "model"),
                     "--input", str(folder), "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and "broken.png" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written before every input was read


def test_push_to_hub_packages_a_loadable_folder_with_a_model_card(trained, tmp_path):
    from vqvae.hub import load_models
    out = tmp_path / "weights"
    push_to_hub.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                      "--out", str(out)])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit") and "type: ssim" in card and "Marcus" in card
    assert load_models(str(out), None).vqvae.num_codes == 16


def test_repackaging_a_prior_continued_from_the_packaged_one_keeps_its_whole_lineage(trained, tmp_path):
    """Shipping a prior trained with --init assets/models/prior into assets/models: its lineage
    runs through the folder being replaced, so it is read before anything is copied."""
    out = tmp_path / "weights"
    first = ["--vqvae", str(trained / "vqvae" / "model"), "--out", str(out)]
    push_to_hub.main([*first, "--prior", str(trained / "prior" / "model")])
    before = json.loads((out / "prior" / "training.json").read_text())["stages"]
    continued = tmp_path / "runs" / "continued"
    shutil.copytree(trained / "prior" / "model", continued / "model")
    (continued / "run_config.json").write_text(json.dumps({"minutes": 60, "batch_size": 32, "lr": 0.0005,
                                                           "seed": 0, "init": str(out / "prior")}))
    push_to_hub.main([*first, "--prior", str(continued / "model")])
    after = json.loads((out / "prior" / "training.json").read_text())["stages"]
    assert after == before + ["60 minutes, batch 32, lr 0.0005, seed 0"]
    assert f"- Prior: {'; then '.join(after)}\n" in (out / "README.md").read_text()


def test_push_to_hub_without_network_fails_with_one_line(trained, tmp_path):
    result = run_cli("train.push_to_hub", "--vqvae", str(trained / "vqvae" / "model"),
                     "--prior", str(trained / "prior" / "model"), "--repo-id", "someone/brainvq")
    assert result.returncode != 0 and "upload to someone/brainvq failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_position_net_and_generation_metrics_end_to_end(trained, tmp_path, capsys):
    from train import evaluate_generation, position_net
    from vqvae.testing import write_split
    rng = np.random.default_rng(1)  # the two-sample test splits by subject: several on each side
    oasis_like = tmp_path / "data"
    write_split(oasis_like / "keras_png_slices_train", [1, 2, 3, 4], 2, rng)
    write_split(oasis_like / "keras_png_slices_validate", [402, 403, 404, 405], 2, rng)
    position_net.main(["--data", str(oasis_like), "--out", str(trained / "position"), "--epochs", "1",
                       "--batch-size", "4", "--no-progress", "--threads", "1"])
    assert "within_one" in capsys.readouterr().out
    faithful = load_model(VQVAE, trained / "vqvae" / "model")  # a realistic decoder on its codes
    realistic = VQVAE(**{**json.loads((trained / "vqvae" / "model" / "config.json").read_text()), "detail_channels": 4})
    realistic.load_state_dict(faithful.state_dict(), strict=False)
    realistic.save_pretrained(tmp_path / "realistic")
    evaluate_generation.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                              "--realistic", str(tmp_path / "realistic"),
                              "--data", str(oasis_like), "--features", str(trained / "position" / "model"),
                              "-n", "6", "--classifier-steps", "3", "--pairs", "4", "--json", "--guidance", "1.5",
                              "--bands", "2",
                              "--out", str(trained / "generation")])
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 6 and report["uniform_bits"] == 4.0
    assert report["realistic_precision"] in ("fp32", "bf16")  # drawn as the app draws it, and said so
    comparisons = [row["comparison"] for row in report["two_sample"]]
    assert comparisons[:3] == ["calibration: validate vs validate (two halves of the subjects)",
                               "reference: train vs validate (real vs real)",
                               "calibration: validate blurred by 1 pixel vs validate"]
    assert comparisons[3:] == ["samples vs validate", "reconstructions vs validate",
                               "samples vs reconstructions (one decoder: the prior's share)",
                               "realistic reconstructions vs validate",
                               "samples decoded by the realistic decoder vs validate",
                               "realistic decoder's samples vs its reconstructions (the prior's share)",
                               *(f"{name} reconstructions below a 2-pixel blur + the real slice's finer detail vs validate"
                                 for name in ("faithful", "realistic"))]
    assert report["bands"] == [2.0]
    assert set(report["two_sample"][0]) == {"comparison", "256", "64"}  # JSON keys: the resolutions
    assert (trained / "generation" / "samples.png").is_file()
    push_to_hub.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                      "--generation", str(trained / "generation" / "report.json"),
                      "--features", str(trained / "position" / "model"), "--out", str(trained / "card")])
    card = (trained / "card" / "README.md").read_text()
    assert "## Generation metrics (6 samples vs validate, temperature 1.0, guidance 1.5 towards" in card
    assert "Classifier two-sample test" in card
    assert "| reconstructions vs validate |" in card
    assert (trained / "card" / "position_net" / "model.safetensors").is_file()
    # the ablation of priors: each prior's samples below one set of calibration rows
    from train import compare_priors
    transformer = train_prior_briefly(trained, oasis_like, tmp_path / "transformer", "--architecture", "transformer",
                                      "--channels", "8", "--attention-heads", "2")
    compare_priors.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", f"pixelcnn={trained / 'prior' / 'model'}",
                         "--prior", f"transformer={transformer}", "--prior", f"guided={trained / 'prior' / 'model'}@2",
                         "--data", str(oasis_like),
                         "--features", str(trained / "position" / "model"), "-n", "6", "--classifier-steps", "3",
                         "--pairs", "4", "--sizes", "64"])
    table = capsys.readouterr().out
    assert "| pixelcnn | GatedPixelCNN | 1 |" in table and "| transformer | CodeTransformer | 1 |" in table
    assert "| guided | GatedPixelCNN | 2 |" in table
    assert "samples of transformer vs validate" in table and "reference: train vs validate" in table
    assert "accuracy at 64x64" in table and "256x256" not in table  # --sizes 64
    with pytest.raises(SystemExit, match="NAME=DIR"):
        compare_priors.main(["--vqvae", "x", "--prior", "nameless", "--data", "y"])
    with pytest.raises(SystemExit, match="not a number"):
        compare_priors.main(["--vqvae", "x", "--prior", "a=b@strong", "--data", "y"])


def test_rd_table_trains_each_factor_and_reuses_a_given_model(trained, oasis_like, tmp_path, capsys):
    from train import rd_table
    rd_table.main(["--data", str(oasis_like), "--out", str(tmp_path), "--factors", "4", "8", "--epochs", "1",
                   "--minutes", "1", "--model", f"8={trained / 'vqvae' / 'model'}", "--no-progress",
                   *[a for a in TINY_VQVAE if a != "--no-progress"]])
    rows = json.loads((tmp_path / "rd_table.json").read_text())
    assert [r["f"] for r in rows] == [4, 8]
    assert rows[0]["bits_per_pixel"] == pytest.approx(4 / 16) and rows[1]["minutes"] == "given"
    assert (tmp_path / "f4" / "model" / "model.safetensors").is_file()
    assert "| 4 | 64x64 |" in capsys.readouterr().out


def test_model_card_follows_init_back_to_the_first_run(tmp_path):
    first, second = tmp_path / "vqvae", tmp_path / "decoder"
    for run, config in ((first, {"minutes": 30, "batch_size": 16, "lr": 0.002, "seed": 0}),
                        (second, {"minutes": 20, "batch_size": 16, "lr": 0.001, "seed": 0,
                                  "init": str(first / "model"), "decoder_only": True})):
        (run / "model").mkdir(parents=True)
        (run / "run_config.json").write_text(json.dumps(config))
    stages = hub.training_stages(json.loads((second / "run_config.json").read_text()))
    assert stages == ["30 minutes, batch 16, lr 0.002, seed 0",
                      "20 minutes of the decoder only, batch 16, lr 0.001, seed 0"]
    head = {"minutes": 36, "batch_size": 16, "lr": 0.0002, "seed": 0, "detail_channels": 32,
            "init_stages": stages}
    assert hub.training_stages(head)[-1] == ("36 minutes of a detail head (32 channels) on the frozen decoder, "
                                             "against a discriminator, batch 16, lr 0.0002, seed 0")
    assert "(32 channels + a half-resolution branch (64 channels))" in hub.training_stages(
        {**head, "detail_mid_channels": 64})[-1]
    assert hub.training_stages({**head, "adversarial_weight": 0.0, "energy_weight": 1.0})[-1].startswith(
        "36 minutes of a detail head (32 channels) on the frozen decoder, scored by the energy score, batch 16")
    assert hub.training_stages({**head, "energy_weight": 1.0})[-1].startswith(
        "36 minutes of a detail head (32 channels) on the frozen decoder, against a discriminator, scored by the "
        "energy score, batch")
    assert hub.training_stages({"minutes": 20, "batch_size": 16, "lr": 0.0005, "seed": 0, "encoder_only": True}) == [
        "20 minutes of the encoder only, batch 16, lr 0.0005, seed 0"]


def test_a_run_keeps_the_lineage_its_init_had_when_it_started(trained, oasis_like, tmp_path):
    """A prior continued from the shipped folder, which is later replaced by that very prior
    (shipping it): the run's lineage is what the folder held when the run started, not what it
    holds now, and a resume keeps it."""
    shipped = tmp_path / "shipped"
    shutil.copytree(trained / "prior" / "model", shipped)
    (shipped / "training.json").write_text(json.dumps({"stages": ["7 minutes, batch 2, lr 0.01, seed 0"]}))
    run = train_prior_briefly(trained, oasis_like, tmp_path / "continued", "--init", str(shipped))
    expected = ["7 minutes, batch 2, lr 0.01, seed 0"]
    assert json.loads((run.parent / "run_config.json").read_text())["init_stages"] == expected
    (shipped / "training.json").write_text(json.dumps({"stages": ["7 minutes, batch 2, lr 0.01, seed 0",
                                                                  "another stage"]}))  # replaced later
    assert hub.stages_of(hub.run_summary(run))[:-1] == expected
    train_prior_briefly(trained, oasis_like, tmp_path / "continued", "--init", str(shipped))  # --resume
    assert json.loads((run.parent / "run_config.json").read_text())["init_stages"] == expected


def test_reconstruct_refuses_to_overwrite_inputs_or_its_own_outputs(trained, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((256, 256), 90, np.uint8)).save(folder / name)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    same = run_cli("train.reconstruct", "--model", str(trained / "vqvae" / "model"),
                   "--input", str(folder), "--out", str(folder))
    assert same.returncode != 0 and "is the input folder" in same.stderr and "Traceback" not in same.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # inputs untouched
    Image.fromarray(np.full((256, 256), 30, np.uint8)).save(folder / "a.jpg")
    clash = run_cli("train.reconstruct", "--model", str(trained / "vqvae" / "model"),
                    "--input", str(folder), "--out", str(tmp_path / "out"))
    assert clash.returncode != 0 and "several extensions" in clash.stderr and "a" in clash.stderr
    assert not (tmp_path / "out").exists()


def test_precision_auto_is_timed_logged_and_kept_on_resume(oasis_like, tmp_path, capsys):
    unpinned = [a for a in TINY_VQVAE if a not in ("--precision", "fp32")]
    run = tmp_path / "auto"
    vqvae.main(["--data", str(oasis_like), "--out", str(run), "--epochs", "1", *unpinned])
    assert "precision auto: one step takes fp32" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    chosen = next(r for r in records if r["kind"] == "precision")
    assert chosen["chosen"] == min(("fp32", "bf16"), key=lambda p: chosen[f"{p}_seconds"])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["precision"] == chosen["chosen"]
    vqvae.main(["--data", str(oasis_like), "--out", str(run), "--epochs", "2", "--resume", *unpinned])
    assert "precision auto" not in capsys.readouterr().out  # the checkpoint's choice, not a new one
    assert json.loads((run / "run_config.json").read_text())["precision"] == "auto"
    pinned = tmp_path / "pinned"
    vqvae.main(["--data", str(oasis_like), "--out", str(pinned), "--epochs", "1", "--bf16", *unpinned])
    assert torch.load(pinned / "checkpoint.pt", weights_only=True)["precision"] == "bf16"


def test_adversarial_decoder_keeps_the_codes_and_resumes_exactly(trained, oasis_like, tmp_path):
    """A realistic decoder: a texture head (a decoder-only change of shape) trained against a
    patch discriminator. Codes stay the faithful model's; the discriminator lives in the
    checkpoint only; a resumed run ends where an uninterrupted one does."""
    faithful = trained / "vqvae" / "model"
    settings = ["--data", str(oasis_like), "--init", str(faithful), "--decoder-only", "--adversarial",
                "--texture-channels", "4", "--disc-channels", "8", "--disc-start", "0", "--disc-crop", "32",
                "--free-background", *TINY_VQVAE]  # crops come from the run's random stream: resumed too
    whole, split = tmp_path / "whole", tmp_path / "split"
    vqvae.main([*settings, "--out", str(whole), "--epochs", "2"])
    vqvae.main([*settings, "--out", str(split), "--epochs", "1"])
    vqvae.main([*settings, "--out", str(split), "--epochs", "2", "--resume"])
    start, realistic = load_model(VQVAE, faithful), load_model(VQVAE, whole / "model")
    images = torch.rand(3, 1, 64, 64)
    assert torch.equal(start.encode(images), realistic.encode(images))  # every prior stays valid
    assert realistic.decoder.texture is not None and not torch.equal(start.decode(start.encode(images)),
                                                                      realistic.decode(realistic.encode(images)))
    state = torch.load(whole / "checkpoint.pt", weights_only=True)
    assert set(state["companions"]) == {"discriminator", "disc_optimizer"}
    assert not any("discriminator" in name for name in realistic.state_dict())
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert any("d_loss" in r and "adv_weight" in r for r in records if r["kind"] == "train")
    a, b = (load_model(VQVAE, run / "model").state_dict() for run in (whole, split))
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_adversarial_needs_decoder_only(oasis_like, tmp_path):
    with pytest.raises(SystemExit, match="--adversarial trains a decoder on frozen codes"):
        vqvae.main(["--data", str(oasis_like), "--out", str(tmp_path), "--epochs", "1", "--adversarial",
                    *TINY_VQVAE])


def test_a_packaged_model_carries_its_stages_into_later_cards(tmp_path):
    shipped = tmp_path / "assets" / "vqvae"  # a packaged model: no run directory around it
    shipped.mkdir(parents=True)
    (shipped / "training.json").write_text(json.dumps({"stages": ["30 minutes, batch 16, lr 0.002, seed 0"]}))
    run = tmp_path / "runs" / "realistic"
    (run / "model").mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"minutes": 90, "batch_size": 8, "lr": 0.0005, "seed": 0,
                                                     "init": str(shipped), "decoder_only": True}))
    assert hub.stages_of(hub.run_summary(run / "model")) == [
        "30 minutes, batch 16, lr 0.002, seed 0", "90 minutes of the decoder only, batch 8, lr 0.0005, seed 0"]


def test_volume_prior_trains_on_neighbouring_slices_from_a_trained_prior(trained, oasis_like, tmp_path):
    from vqvae.codes import slice_pairs
    run = tmp_path / "volume"
    run.mkdir()
    for split in ("train", "validate"):  # the same codes as the prior it starts from
        shutil.copy(trained / "prior" / f"codes_{split}.npz", run)
    prior.main(["--vqvae", str(trained / "vqvae" / "model"), "--data", str(oasis_like), "--out", str(run),
                "--epochs", "1", "--resume", "--init", str(trained / "prior" / "model"), "--previous-slice", "4",
                *TINY_PRIOR])
    volume = load_model(GatedPixelCNN, run / "model")
    assert volume.previous_slice == 4
    validate = load_codes(run / "codes_validate.npz")
    current, below = slice_pairs(validate["subjects"], validate["positions"])
    assert validate["positions"][current].tolist() == [1, 2, 3] and (validate["positions"][below] == validate["positions"][current] - 1).all()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    start = load_model(GatedPixelCNN, trained / "prior" / "model")
    assert final["nll_bits_independent"] == pytest.approx(
        nll_bits(start, validate["codes"][current], validate["positions"][current]), rel=1e-6)
    assert final["nll_bits"] == pytest.approx(nll_bits(volume, validate["codes"][current], validate["positions"][current],
                                                       previous=validate["codes"][below]), rel=1e-5)


def test_sample_volume_writes_nifti_volumes(trained, oasis_like, tmp_path):
    import_or_skip("nibabel")
    from train import sample_volume
    from vqvae.upload import NiftiVolume
    run = tmp_path / "volume"
    run.mkdir()
    for split in ("train", "validate"):
        shutil.copy(trained / "prior" / f"codes_{split}.npz", run)
    prior.main(["--vqvae", str(trained / "vqvae" / "model"), "--data", str(oasis_like), "--out", str(run),
                "--epochs", "1", "--resume", "--init", str(trained / "prior" / "model"), "--previous-slice", "4",
                *TINY_PRIOR])
    out = tmp_path / "volumes"
    sample_volume.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                        "--volume-prior", str(run / "model"), "-n", "2", "--out", str(out), "--seed", "3"])
    assert sorted(p.name for p in out.iterdir()) == ["volume_000.nii.gz", "volume_000.png",
                                                     "volume_001.nii.gz", "volume_001.png"]
    volume = NiftiVolume(out / "volume_000.nii.gz")
    assert volume.shape == (256, 256, 32)  # the prior's 32 positions, axial slices last
    with pytest.raises(SystemExit, match="no volume prior"):
        sample_volume.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                            "--volume-prior", str(tmp_path / "missing"), "-n", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match="share one codebook"):  # the bundled one (K = 512) is not these codes'
        sample_volume.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                            "-n", "1", "--out", str(out)])


def test_evaluate_volume_measures_sampled_baseline_and_real_volumes(trained, oasis_like, tmp_path, capsys):
    from train import evaluate_volume
    from vqvae.data import load_split
    from vqvae.generation import SliceCNN
    from vqvae.volume import real_volumes, volume_similarity
    volume_prior = GatedPixelCNN(num_codes=16, channels=8, layers=2, previous_slice=4, num_positions=4)
    volume_prior.save_pretrained(tmp_path / "volume")
    SliceCNN(num_classes=4, width=8, feature_dim=8).save_pretrained(tmp_path / "features")
    evaluate_volume.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(trained / "prior" / "model"),
                          "--volume-prior", str(tmp_path / "volume"), "--data", str(oasis_like),
                          "--features", str(tmp_path / "features"), "-n", "2", "--json"])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["kind"] for r in rows] == ["real validate volumes", "faithful reconstructions of the real volumes",
                                         "sampled volumes (volume prior)", "independent slices at each k (baseline)"]
    validate = load_split(oasis_like, "validate")
    real = volume_similarity(real_volumes(validate.images, validate.subjects, validate.positions))
    assert rows[0]["consecutive_ssim"] == pytest.approx(real["consecutive_ssim"])
    assert rows[1]["volumes"] == rows[0]["volumes"]
    assert rows[2]["volumes"] == 2 and rows[2]["seconds_per_volume"] > 0


def test_evaluate_surprise_reports_auc_and_writes_the_reference(trained, tmp_path, capsys):
    from train import evaluate_surprise
    from vqvae.generation import SliceCNN
    from vqvae.testing import write_split
    data = tmp_path / "data"  # heads big enough to take a lesion well inside
    write_split(data / "keras_png_slices_validate", [402, 403], 3, np.random.default_rng(2))
    SliceCNN(num_classes=4, width=8, feature_dim=8).save_pretrained(tmp_path / "features")
    out = tmp_path / "prior_copy"
    shutil.copytree(trained / "prior" / "model", out)
    evaluate_surprise.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(out), "--data", str(data),
                            "--features", str(tmp_path / "features"), "-n", "4", "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["slices"] == 4 and report["lesion_codes"] > 0 and report["reference_slices"] == 6
    assert report["auc"] == report["auc_position_predicted"] and 0 <= report["auc_nll"] <= 1
    reference = json.loads((out / "surprise_reference.json").read_text())
    assert reference["total_bits_mean"] == pytest.approx(report["reference_total_bits_mean"])
    evaluate_surprise.main(["--vqvae", str(trained / "vqvae" / "model"), "--prior", str(out), "--data", str(data),
                            "--features", str(tmp_path / "features"), "-n", "4", "--out", str(tmp_path / "new" / "dir"),
                            "--json"])  # a folder that does not exist yet is made
    assert json.loads((tmp_path / "new" / "dir" / "surprise_reference.json").read_text()) == reference
    from vqvae.hub import load_models
    weights = tmp_path / "weights"
    shutil.copytree(trained / "vqvae" / "model", weights / "vqvae")
    shutil.copytree(out, weights / "prior")
    assert load_models(str(weights), None).surprise_reference == reference  # the app shows it
