"""Generation metrics (train/generation.py) against closed forms and independent references."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.conftest import synthetic_slice
from train.generation import (SliceCNN, frechet_distance, generation_report, mean_pair_ms_ssim,
                              nearest_ssim, two_sample_accuracy)
from vqvae.metrics import MS_SSIM_WEIGHTS, ms_ssim_torch, ssim_torch


def slices(n, seed=0, size=256):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([synthetic_slice(rng, size) for _ in range(n)]))[:, None]


def ms_ssim_numpy(x, y, weights, window=7):
    """Independent MS-SSIM: scipy's uniform filter, edges cropped as scikit-image does."""
    result, crop = 1.0, (window - 1) // 2
    for scale, weight in enumerate(weights):
        if scale:
            x, y = (a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean((1, 3)) for a in (x, y))
        mean = lambda a: ndimage.uniform_filter(a, window)  # noqa: E731
        n = window * window / (window * window - 1)
        mx, my = mean(x), mean(y)
        vx, vy, vxy = n * (mean(x * x) - mx * mx), n * (mean(y * y) - my * my), n * (mean(x * y) - mx * my)
        lum = (2 * mx * my + 1e-4) / (mx * mx + my * my + 1e-4)
        cs = (2 * vxy + 9e-4) / (vx + vy + 9e-4)
        term = cs if scale + 1 < len(weights) else lum * cs
        result *= max(term[crop:-crop, crop:-crop].mean(), 0) ** weight
    return result


def test_ms_ssim_matches_an_independent_implementation():
    x = slices(2, seed=1).double() / 255
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ours = ms_ssim_torch(x, y)
    for k in range(2):
        assert ours[k].item() == pytest.approx(ms_ssim_numpy(x[k, 0].numpy(), y[k, 0].numpy(), MS_SSIM_WEIGHTS), abs=1e-4)
    assert torch.allclose(ms_ssim_torch(x, y, weights=(1.0,)), ssim_torch(x, y), atol=1e-6)
    assert torch.allclose(ms_ssim_torch(x, x), torch.ones(2), atol=1e-6)


def test_frechet_distance_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # equal covariances: the distance is the squared distance of the means
    assert frechet_distance(a, a + torch.tensor([3.0, 0, 4.0])) == pytest.approx(25.0, rel=1e-6)
    # N(0, I) vs N(0, 4I) in 3-D: tr(I + 4I - 2*2I) = 3
    b = torch.randn(4000, 3, generator=g) * 2
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.1)


def test_nearest_ssim_finds_copies_and_ranks_noise_lower():
    references = slices(40, seed=2)
    noisy = (references[:4].float() + torch.randn(4, 1, 256, 256, generator=torch.Generator().manual_seed(1)) * 40)
    queries = torch.cat([references[5:9], noisy.clamp(0, 255).round().to(torch.uint8)])
    best = nearest_ssim(queries, references, candidates=8)
    assert torch.allclose(best[:4], torch.ones(4), atol=1e-5)
    assert (best[4:] < 0.9).all()


def test_pair_diversity():
    same = slices(1).expand(10, -1, -1, -1)
    assert mean_pair_ms_ssim(same, pairs=20) == pytest.approx(1.0, abs=1e-5)
    assert mean_pair_ms_ssim(slices(10, seed=3), pairs=20) < 0.95


def test_two_sample_test_separates_different_sets_and_not_equal_ones():
    torch.manual_seed(0)
    real = slices(40, seed=4, size=256)
    bright = torch.where(real > 0, 255, 0).to(torch.uint8)  # same shapes, flat bright inside
    assert two_sample_accuracy(real, bright, steps=100) > 0.9
    assert two_sample_accuracy(real[:20], real[20:], steps=100) <= 0.75


def test_generation_report_keys_and_ranges():
    torch.manual_seed(0)
    report = generation_report(slices(12, seed=5), slices(30, seed=6), slices(12, seed=7),
                               SliceCNN(num_classes=4, width=8, feature_dim=8), classifier_steps=2, pairs=8)
    assert report["images"] == 12
    assert report["frechet"] >= 0 and report["frechet_reference"] >= 0
    assert 0 <= report["two_sample_accuracy"] <= 1
    assert 0 <= report["samples_above_p99"] <= 12
    assert report["nearest_train_ssim_max"] <= 1 + 1e-6
    assert "two_sample_accuracy_reconstructions" not in report


def test_reconstructions_give_a_perfect_priors_floor():
    torch.manual_seed(0)
    validate, train, samples = slices(40, seed=7, size=128), slices(30, seed=6, size=128), slices(12, seed=5, size=128)
    net = SliceCNN(num_classes=4, width=8, feature_dim=8)
    exact = generation_report(samples, train, validate, net, classifier_steps=2, pairs=8,
                              reconstructions=validate.clone())
    assert abs(exact["frechet_reconstructions"]) < 1e-3  # identical images: no distance
    checker = (torch.arange(128)[:, None] + torch.arange(128)) % 2 * 40  # a decoder's tell-tale pattern
    marked = (validate.int() + checker).clamp(0, 255).to(torch.uint8)
    told = generation_report(samples, train, validate, net, classifier_steps=100, pairs=8,
                             reconstructions=marked)
    assert told["frechet_reconstructions"] > exact["frechet_reconstructions"]
    assert told["two_sample_accuracy_reconstructions"] > 0.9
