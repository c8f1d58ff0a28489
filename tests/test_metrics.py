import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from vqvae.metrics import brain_mask, code_statistics, evaluate_reconstructions, image_metrics, ssim_torch
from vqvae.testing import synthetic_slice


def test_ssim_torch_matches_scikit_image():
    rng = np.random.default_rng(0)
    x = np.stack([synthetic_slice(rng, 64) for _ in range(3)]).astype(np.float64) / 255
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    ours = ssim_torch(torch.from_numpy(x)[:, None].float(), torch.from_numpy(y)[:, None].float())
    reference = [structural_similarity(a, b, data_range=1.0) for a, b in zip(x, y)]
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4)


def test_ssim_torch_is_differentiable_and_one_for_identical_images():
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    s = ssim_torch(x, x.detach())
    assert torch.allclose(s, torch.ones(2), atol=1e-5)
    (1 - s).sum().backward()
    assert x.grad is not None


def test_image_metrics_brain_ssim_ignores_background():
    rng = np.random.default_rng(1)
    x = synthetic_slice(rng, 128).astype(np.float64) / 255
    y = x.copy()
    inside = brain_mask(x)
    y[inside] = np.clip(y[inside] + rng.normal(0, 0.1, inside.sum()), 0, 1)
    metrics = image_metrics(x, y)
    # the untouched background lifts full-image SSIM above the in-brain figure
    assert metrics["ssim_brain"] < metrics["ssim"] < 1
    assert metrics["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((x - y) ** 2)))
    assert image_metrics(x, x)["ssim"] == pytest.approx(1.0)


def test_code_statistics():
    stats = code_statistics(torch.tensor([5, 5, 0, 0]))
    assert stats["usage"] == 0.5 and stats["perplexity"] == pytest.approx(2.0)


def test_evaluate_reconstructions_summary():
    from vqvae.model import VQVAE
    model = VQVAE(num_codes=8, code_dim=4, base_channels=4, hidden_channels=8, res_hidden=4)
    images = torch.randint(0, 255, (3, 1, 32, 32), dtype=torch.uint8)
    summary = evaluate_reconstructions(model, images, batch_size=2)
    assert summary["images"] == 3 and 0 < summary["usage"] <= 1
    assert summary["ssim_min"] <= summary["ssim"]
