"""Generation metrics (train/generation.py) against closed forms and independent references."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from vqvae.testing import synthetic_slice
from vqvae.generation import (SAMPLES_VS_RECONSTRUCTIONS, Labelled, SliceCNN, band_swap, blurred,
                              frechet_distance, frechet_from_statistics, generation_report, mean_pair_ms_ssim,
                              nearest_ssim, subject_split, two_sample_test)
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


def test_frechet_uses_the_matrix_square_root_of_non_commuting_covariances():
    """tr(A + B - 2 (A^1/2 B A^1/2)^1/2) from eigendecompositions, for covariances that do not
    commute: an element-wise square root, or one that assumes commuting matrices, fails."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov_a, cov_b = x @ x.T + np.eye(4), y @ y.T + 0.5 * np.eye(4)
    assert not np.allclose(cov_a @ cov_b, cov_b @ cov_a)

    def sqrt_psd(m):
        values, vectors = np.linalg.eigh(m)
        return vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    root_a = sqrt_psd(cov_a)
    expected = 4.0 + np.trace(cov_a + cov_b - 2 * sqrt_psd(root_a @ cov_b @ root_a))
    mu_a, mu_b = np.zeros(4), np.array([2.0, 0, 0, 0])
    assert frechet_from_statistics(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-9)
    elementwise = 4.0 + np.trace(cov_a + cov_b - 2 * np.sqrt(np.abs(cov_a @ cov_b)))
    assert abs(elementwise - expected) > 0.1  # the check above can tell the two apart


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


def people(subjects, per_subject, seed, size=64, texture=3):
    """Each subject's slices are near-duplicates (one synthetic head plus faint noise), as one
    person's OASIS slices are; -> Labelled(images, subjects)."""
    rng = np.random.default_rng(seed)
    images, ids = [], []
    for subject in subjects:
        head = synthetic_slice(rng, size).astype(np.int16)
        for _ in range(per_subject):
            noisy = np.where(head > 0, head + rng.integers(-texture, texture + 1, head.shape), 0)
            images.append(np.clip(noisy, 0, 255).astype(np.uint8))
            ids.append(subject)
    return Labelled(torch.from_numpy(np.stack(images))[:, None], torch.tensor(ids))


def test_subject_split_keeps_people_and_their_reconstructions_on_one_side():
    real = people(range(10), 3, seed=0)
    copies = Labelled(real.images.clone(), real.subjects.clone())  # a "reconstruction" of each slice
    (train_a, train_b), (test_a, test_b) = subject_split(real, copies, torch.Generator().manual_seed(0))
    train_people = set(real.subjects[train_a].tolist()) | set(copies.subjects[train_b].tolist())
    test_people = set(real.subjects[test_a].tolist()) | set(copies.subjects[test_b].tolist())
    assert train_people.isdisjoint(test_people) and len(train_a) == len(train_b) and len(test_a) == len(test_b)


def test_two_sample_test_calls_different_people_equal_and_a_blur_different():
    torch.manual_seed(0)
    first, second = people(range(0, 12), 4, seed=1), people(range(100, 112), 4, seed=2)
    # same distribution, different people: near chance, although each person is easy to recognise
    assert two_sample_test(first, second, repeats=2, steps=60)["mean"] <= 0.75
    sharp = people(range(0, 12), 4, seed=3, texture=40)  # fine texture, as real slices have
    soft = Labelled(blurred(sharp.images), sharp.subjects)
    assert two_sample_test(sharp, soft, repeats=2, steps=100)["mean"] >= 0.85


def test_band_swap_keeps_the_decoded_coarse_image_and_the_real_fine_detail():
    real = slices(3, seed=4, size=64)
    assert torch.equal(band_swap(real, real, 2.0), real)  # a perfect decoder's hybrid is the slice itself
    brighter = (real.int() + 20).clamp(max=255).to(torch.uint8)  # wrong at the coarsest scale: the offset stays
    inside = (real > 0) & (real < 235)
    offset = (band_swap(brighter, real, 2.0).int() - real.int())[inside].float().mean()
    assert offset == pytest.approx(20, abs=0.5)
    lifted = real // 2 + 60  # 60..187: the pattern below is never clipped
    checker = (torch.arange(64)[:, None] + torch.arange(64)) % 2 * 30 - 15  # wrong only in the finest band: gone
    marked = (lifted.int() + checker).to(torch.uint8)
    assert (marked.int() - lifted.int()).abs().float().mean() == 15
    assert (band_swap(marked, lifted, 2.0).int() - lifted.int()).abs().float().mean() < 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        band_swap(real[:2], real, 2.0)


def test_rank_auc_is_the_chance_a_one_outscores_a_zero():
    from vqvae.generation import rank_auc
    labels = torch.tensor([0, 0, 1, 1])
    assert rank_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert rank_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert rank_auc(torch.tensor([0.1, 0.3, 0.2, 0.4]), labels) == 0.75  # 3 of 4 pairs in order
    assert rank_auc(torch.zeros(4), labels) == 0.5  # ties count half
    # a shifted threshold changes accuracy, not the AUC: every score below 0 still ranks
    assert rank_auc(torch.tensor([-9.0, -8.0, -2.0, -1.0]), labels) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        rank_auc(torch.ones(3), torch.ones(3, dtype=torch.long))


def test_two_sample_loss_still_ranks_candidates_where_accuracy_has_saturated():
    torch.manual_seed(0)
    sharp = people(range(0, 12), 4, seed=3, texture=40)
    slightly, badly = (Labelled(blurred(sharp.images, sigma), sharp.subjects) for sigma in (1.0, 3.0))
    near, far = (two_sample_test(sharp, other, repeats=2, steps=100) for other in (slightly, badly))
    assert near["mean"] >= 0.85 and far["mean"] >= 0.85  # both told apart ...
    assert near["auc"] >= 0.9 and far["auc"] >= 0.9
    assert far["loss"] < near["loss"] < 0.693  # ... but one far more surely (ln 2: chance)


def test_generation_report_measures_samples_against_real_slices():
    torch.manual_seed(0)
    train, validate = people(range(0, 10), 3, seed=6, size=256), people(range(50, 58), 3, seed=7, size=256)
    net = SliceCNN(num_classes=4, width=8, feature_dim=8)
    copies = generation_report(validate.images.clone(), train, validate, net, classifier_steps=2, pairs=8,
                               repeats=1)
    assert copies["frechet"] == pytest.approx(0, abs=1e-3)  # the samples are validate itself
    assert copies["ms_ssim_pairs"] == pytest.approx(copies["ms_ssim_pairs_reference"])
    blank = generation_report(torch.zeros_like(validate.images), train, validate, net, classifier_steps=2,
                              pairs=8, repeats=1)
    assert blank["frechet"] > 3 * blank["frechet_reference"] and blank["ms_ssim_pairs"] == pytest.approx(1.0, abs=1e-4)
    assert "frechet_reconstructions" not in blank
    assert [row["comparison"] for row in blank["two_sample"]][-1] == "samples vs validate"


def test_reconstructions_are_measured_against_validate():
    torch.manual_seed(0)
    train, validate = people(range(0, 10), 3, seed=6, size=128), people(range(50, 58), 3, seed=7, size=128)
    net = SliceCNN(num_classes=4, width=8, feature_dim=8)
    exact = generation_report(validate.images[:12], train, validate, net, classifier_steps=2, pairs=8,
                              repeats=1, reconstructions=validate.images.clone())
    assert abs(exact["frechet_reconstructions"]) < 1e-3  # identical images: no distance
    checker = (torch.arange(128)[:, None] + torch.arange(128)) % 2 * 40  # a decoder's tell-tale pattern
    marked = (validate.images.int() + checker).clamp(0, 255).to(torch.uint8)
    told = generation_report(validate.images[:12], train, validate, net, classifier_steps=100, pairs=8,
                             repeats=1, reconstructions=marked)
    assert told["frechet_reconstructions"] > exact["frechet_reconstructions"]
    row = next(r for r in told["two_sample"] if r["comparison"] == "reconstructions vs validate")
    assert row[128]["mean"] > 0.9
    # samples (real slices here) against the marked reconstructions: one decoder's look on one side only
    row = next(r for r in told["two_sample"] if r["comparison"] == SAMPLES_VS_RECONSTRUCTIONS)
    assert row[128]["mean"] > 0.9
    assert SAMPLES_VS_RECONSTRUCTIONS not in [r["comparison"] for r in generation_report(
        validate.images[:12], train, validate, net, classifier_steps=2, pairs=8, repeats=1)["two_sample"]]
