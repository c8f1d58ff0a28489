import numpy as np
import torch
from skimage.metrics import structural_similarity

from tests.conftest import BUNDLED
from vqvae.code_search import _scores, ranked_codes, search_batch, window_ssim
from vqvae.data import load_split
from vqvae.hub import load_model
from vqvae.metrics import evaluate_reconstructions, ssim_torch
from vqvae.model import VQVAE
from vqvae.testing import synthetic_slice


def toy_model_and_slices(n=3, size=64, steps=60):
    """A small VQ-VAE trained briefly on synthetic slices (an untrained decoder draws noise, where
    no choice of codes means anything), and ``n`` slices it has not seen."""
    torch.manual_seed(0)
    model = VQVAE(num_codes=16, code_dim=8, base_channels=4, hidden_channels=8, res_hidden=4)
    rng = np.random.default_rng(0)
    slices = torch.from_numpy(np.stack([synthetic_slice(rng, size) for _ in range(8 + n)]))[:, None].float() / 255
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        reconstruction, commitment, _ = model(slices[:8])
        loss = torch.nn.functional.mse_loss(reconstruction, slices[:8]) + commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), slices[8:]


def test_nearest_candidate_is_encode_and_no_search_returns_it():
    model, x = toy_model_and_slices()
    assert torch.equal(ranked_codes(model, x, 3)[..., 0], model.encode(x))
    assert torch.equal(search_batch(model, x, candidates=1), model.encode(x))
    assert torch.equal(search_batch(model, x, sweeps=0), model.encode(x))


def test_search_raises_ssim_and_never_lowers_a_slice():
    model, x = toy_model_and_slices()
    nearest = ssim_torch(model.decode(model.encode(x)), x)
    codes = search_batch(model, x, candidates=4, sweeps=2)
    searched = ssim_torch(model.decode(codes), x)
    assert codes.shape == model.encode(x).shape and 0 <= codes.min() and codes.max() < model.num_codes
    assert (searched >= nearest - 1e-6).all()
    assert searched.mean() > nearest.mean() + 1e-3
    assert torch.equal(search_batch(model, x, candidates=4, sweeps=2), codes)  # deterministic


def test_candidates_scored_in_one_decode_score_as_one_at_a_time():
    """_scores stacks several candidate grids into one decode; each grid's window SSIM must be
    what decoding it alone gives (and in the order given)."""
    model, x = toy_model_and_slices()
    ranked = ranked_codes(model, x, 4)
    grids = [ranked[..., rank] for rank in range(4)]
    alone = _scores(model, grids, x, True, batch=1)
    stacked = _scores(model, grids, x, True, batch=32)
    assert len(alone) == len(stacked) == 4
    for a, b in zip(alone, stacked):
        assert a.shape == (len(x), *ranked.shape[1:3])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(stacked[0], stacked[3])  # different grids, different scores


def test_window_ssim_is_scikit_images_map_averaged_over_3x3_cells():
    rng = np.random.default_rng(1)
    x = synthetic_slice(rng, 64).astype(np.float64) / 255
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    _, full = structural_similarity(x, y, data_range=1.0, full=True)
    full[:3], full[-3:], full[:, :3], full[:, -3:] = 0, 0, 0, 0  # windows not inside the image
    cells = full.reshape(8, 8, 8, 8).mean(axis=(1, 3))
    padded = np.pad(cells, 1, constant_values=np.nan)
    expected = np.nanmean(np.stack([padded[i:i + 8, j:j + 8] for i in range(3) for j in range(3)]), axis=0)
    ours = window_ssim(torch.from_numpy(y)[None, None].float(), torch.from_numpy(x)[None, None].float(), 8)
    np.testing.assert_allclose(ours[0].numpy(), expected, atol=1e-4)


def test_evaluate_reports_the_searched_codes():
    model, x = toy_model_and_slices()
    images = (x * 255).round().to(torch.uint8)
    plain = evaluate_reconstructions(model, images)
    searched = evaluate_reconstructions(model, images, encode=lambda s: search_batch(model, s, 4, 2))
    assert searched["ssim"] > plain["ssim"]


def test_search_on_the_bundled_decoder_raises_real_ssim(oasis_root):
    """The shipped faithful decoder on 6 validate slices, one sweep, scikit-image's SSIM of the
    uint8 output: the search is worth its cost on real slices, not only on a toy."""
    model = load_model(VQVAE, BUNDLED / "vqvae")
    images = load_split(oasis_root, "validate", progress=False).images[::200]
    x = images.float() / 255

    def skimage_ssim(codes):
        rebuilt = (model.decode(codes) * 255).round() / 255
        return np.array([structural_similarity(a[0].numpy(), b[0].numpy(), data_range=1.0)
                         for a, b in zip(x.double(), rebuilt.double())])

    nearest, searched = skimage_ssim(model.encode(x)), skimage_ssim(search_batch(model, x, 4, 1))
    assert (searched > nearest - 1e-3).all()
    assert searched.mean() > nearest.mean() + 0.003


def test_judged_without_the_texture_head_the_whole_decoder_still_never_loses():
    """Candidates are judged by the base decoder; the per-sweep check uses the whole one, so a
    head that disagrees with the judge cannot make a slice worse."""
    model, x = toy_model_and_slices()
    textured = VQVAE(num_codes=16, code_dim=8, base_channels=4, hidden_channels=8, res_hidden=4, texture_channels=4)
    textured.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        textured.decoder.texture.out[1].weight.normal_(std=0.3)  # a head that changes the picture
    textured.eval()
    nearest = ssim_torch(textured.decode(textured.encode(x)), x)
    searched = ssim_torch(textured.decode(search_batch(textured, x, 4, 2)), x)
    assert (searched >= nearest - 1e-6).all()
    judged_whole = ssim_torch(textured.decode(search_batch(textured, x, 4, 2, texture_judge=True)), x)
    assert (judged_whole >= nearest - 1e-6).all()
