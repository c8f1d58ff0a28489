import math

import pytest
import torch

from vqvae.model import VQVAE, stage_widths


def tiny(**kw):
    return VQVAE(**{"num_codes": 16, "code_dim": 8, "base_channels": 4, "hidden_channels": 8,
                    "res_blocks": 1, "res_hidden": 4, **kw})


@pytest.mark.parametrize("f", [4, 8, 16])
def test_shapes_for_each_downsampling_factor(f):
    model = tiny(downsample=f)
    x = torch.rand(2, 1, 64, 64)
    reconstruction, loss, codes = model(x)
    assert reconstruction.shape == x.shape and codes.shape == (2, 64 // f, 64 // f)
    assert loss.ndim == 0
    assert model.bits_per_pixel == pytest.approx(math.log2(16) / f ** 2)


def test_stage_widths_and_bad_factor():
    assert stage_widths(8, 32, 128) == [32, 64, 128]
    with pytest.raises(ValueError, match="power of two"):
        stage_widths(6, 32, 128)


def test_encode_decode_match_forward_in_eval_mode():
    torch.manual_seed(0)
    model = tiny()
    model.train()
    model(torch.rand(4, 1, 32, 32))  # data-dependent codebook init
    model.eval()
    x = torch.rand(2, 1, 32, 32)
    reconstruction, _, codes = model(x)
    assert torch.equal(model.encode(x), codes)
    assert torch.allclose(model.decode(codes), reconstruction.clamp(0, 1))
    assert model.decode(codes).min() >= 0 and model.decode(codes).max() <= 1


def test_save_and_load_hub_layout_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = tiny(downsample=4)
    model.train()
    model(torch.rand(2, 1, 32, 32))
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}
    loaded = VQVAE.from_pretrained(tmp_path).eval()
    assert loaded.downsample == 4 and loaded.num_codes == 16
    x = torch.rand(1, 1, 32, 32)
    model.eval()
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)


def test_refinement_blocks_start_as_the_identity_and_keep_weight_names():
    plain, refined = tiny(), tiny(refine_blocks=2)
    assert set(plain.state_dict()) <= set(refined.state_dict())  # a plain decoder's names all stay
    refined.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(plain.reconstruct(x)[0], refined.reconstruct(x)[0])
    upsamplings = sum(isinstance(layer, torch.nn.ConvTranspose2d) for layer in refined.decoder.net)
    assert len(refined.decoder.refine) == upsamplings - 1  # all but the output stage


def test_detail_head_starts_as_what_decode_shows_and_draws_with_per_image_noise_in_eval():
    plain, detailed = tiny(refine_blocks=1), tiny(refine_blocks=1, detail_channels=6, detail_blocks=1)
    detailed.load_state_dict(plain.state_dict(), strict=False)
    plain.eval(), detailed.eval()
    x = torch.rand(2, 1, 32, 32)
    codes = plain.encode(x)
    assert torch.equal(plain.decode(codes), detailed.decode(codes))  # zero-started: the clamped image
    z = detailed.quantizer.lookup(codes)
    assert torch.equal(detailed.decoder(z), plain.decoder(z).clamp(0, 1))  # drawn on what decode shows
    with torch.no_grad():
        detailed.decoder.detail.out[1].weight.normal_(std=0.1)
    assert not torch.equal(plain.decode(codes), detailed.decode(codes))
    assert torch.equal(detailed.decode(codes), detailed.decode(codes))  # eval: the same noise every call
    # each image's noise is its own: the same codes decode alike in any batch, and two images never share it
    assert torch.allclose(detailed.decode(codes[1:]), detailed.decode(codes)[1:], atol=1e-6)
    head = detailed.decoder.detail
    base = torch.full((2, 1, 32, 32), 0.5)
    grain = head(base) - base  # the same image twice: the same noise
    assert torch.equal(grain[0], grain[1])
    base[1, 0, 0, 0] = 0.6  # one pixel apart: other noise
    grain = head(base) - base
    assert (grain[0] - grain[1]).abs()[0, 8:, 8:].max() > 1e-3
    assert torch.equal(detailed.decoder(z, texture=False), plain.decoder(z))  # code search's cheap base
    assert torch.equal(detailed.decoder.base(z), plain.decoder(z))
    detailed.train()
    assert not torch.equal(detailed.decoder(z), detailed.decoder(z))  # training: fresh noise


def test_a_highpassed_detail_head_draws_detail_only_and_leaves_the_coarse_image():
    from vqvae.model import DetailHead, low_pass
    torch.manual_seed(0)
    shifted, highpassed = DetailHead(1, 6, 1, 2), DetailHead(1, 6, 1, 2, highpass=2.0)
    for head in (shifted, highpassed):  # a head that only shifts brightness
        head.out[1].bias.data.fill_(-0.05)
    base = torch.rand(2, 1, 32, 32) * 0.5 + 0.25
    assert torch.allclose(shifted.eval()(base), base - 0.05)
    assert torch.allclose(highpassed.eval()(base), base, atol=1e-6)  # a constant has no detail
    shifted.out[1].weight.data.normal_(std=0.2)  # a head that draws: texture plus a coarse shift
    highpassed.load_state_dict(shifted.state_dict())
    coarse = [low_pass(head(base) - base, 2.0).abs().mean() for head in (shifted, highpassed)]
    fine = [(head(base) - base - low_pass(head(base) - base, 2.0)).abs().mean() for head in (shifted, highpassed)]
    assert coarse[1] < 0.2 * coarse[0]
    assert fine[1] > 0.5 * fine[0]  # the detail itself stays
    model = tiny(detail_channels=4, detail_blocks=1, detail_highpass=2.0)
    assert model.decoder.detail.highpass == 2.0 and tiny(detail_channels=4).decoder.detail.highpass == 0.0


def test_a_half_resolution_branch_starts_at_zero_and_widens_what_the_head_sees():
    from vqvae.model import DetailHead
    torch.manual_seed(0)
    plain, branched = DetailHead(1, 6, 2, 2), DetailHead(1, 6, 2, 2, mid_channels=8, mid_blocks=2)
    branched.load_state_dict(plain.state_dict(), strict=False)  # a trained head taking the branch on
    base = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        plain.out[1].weight.normal_(std=0.1)
        branched.out[1].weight.copy_(plain.out[1].weight)
    assert torch.equal(plain.eval()(base), branched.eval()(base))  # where it was
    with torch.no_grad():
        branched.mid[-2].weight.normal_(std=0.1)
    assert not torch.equal(plain(base), branched(base))

    def reach(head):  # rows of the input that one output pixel depends on
        image = base[:1].clone().requires_grad_(True)
        head.train()(image)[0, 0, 32, 32].backward()
        rows = image.grad[0, 0].abs().sum(1).nonzero()
        return int(rows.max() - rows.min() + 1)
    assert reach(plain) == 9  # 3x3 in, two blocks, 3x3 out
    assert reach(branched) > 2 * reach(plain)
    assert tiny(detail_channels=4, detail_mid_channels=8).decoder.detail.mid is not None
    assert tiny(detail_channels=4).decoder.detail.mid is None


def test_texture_head_starts_as_the_identity_and_draws_with_fixed_noise_in_eval():
    plain, textured = tiny(refine_blocks=1), tiny(refine_blocks=1, texture_channels=6)
    textured.load_state_dict(plain.state_dict(), strict=False)
    plain.eval(), textured.eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(plain.reconstruct(x)[0], textured.reconstruct(x)[0])  # zero-started head and noise
    with torch.no_grad():
        textured.decoder.texture.out[1].weight.normal_(std=0.1)
        textured.decoder.texture.noise_scale.fill_(0.5)
    codes = textured.encode(x)
    assert not torch.equal(plain.decode(codes), textured.decode(codes))
    assert torch.equal(textured.decode(codes), textured.decode(codes))  # eval: the same noise every call
    z = textured.quantizer.lookup(codes)
    assert torch.equal(textured.decoder(z, texture=False), plain.decoder(z))  # the base decoder alone
    textured.train()
    z = textured.quantizer.lookup(codes)
    assert not torch.equal(textured.decoder(z), textured.decoder(z))  # training: fresh noise


def test_the_detail_head_draws_in_the_precision_chosen_for_it():
    from vqvae.precision import choose_detail_precision
    model = tiny(refine_blocks=1, detail_channels=6, detail_blocks=1).eval()
    with torch.no_grad():
        model.decoder.detail.out[1].weight.normal_(std=0.1)
    codes = model.encode(torch.rand(2, 1, 32, 32))
    exact = model.decode(codes)
    model.decoder.detail.precision = "bf16"
    rounded = model.decode(codes)
    assert not torch.equal(exact, rounded) and (exact - rounded).abs().max() < 0.02  # bf16's rounding, no more
    assert torch.equal(model.decode(codes, draft=True), tiny_base(model, codes))  # drafts skip the head
    seconds = choose_detail_precision(model, size=32)
    assert set(seconds) == {"fp32", "bf16"} and model.decoder.detail.precision == min(seconds, key=seconds.get)
    assert choose_detail_precision(tiny(refine_blocks=1)) == {}  # no head: nothing to choose
    head, image = model.decoder.detail.train(), torch.rand(1, 1, 32, 32)  # training: the trainer's autocast decides

    def drawn(precision, outer=False):
        head.precision = precision
        torch.manual_seed(0)  # the same training noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer):
            return head(image)
    assert torch.equal(drawn("bf16"), drawn("fp32"))  # the choice is not applied in training
    assert not torch.equal(drawn("fp32", outer=True), drawn("fp32"))  # nor does it switch a trainer's bf16 off


def tiny_base(model, codes):
    return model.decoder.base(model.quantizer.lookup(codes)).clamp(0.0, 1.0)
