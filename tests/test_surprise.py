"""Per-code surprise under the prior, synthetic lesions and the AUC that judges them."""
import math

import numpy as np
import pytest
import torch

from tests.test_prior import tiny_prior
from vqvae.surprise import (auc, cells_covering, code_surprise, heat_map, paste_lesion, regional_surprise,
                            surprise_and_expected)
from vqvae.testing import synthetic_slice


def test_code_surprise_is_each_codes_negative_log2_probability():
    prior = tiny_prior(coordinates=3)
    codes = torch.randint(0, 16, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    bits = code_surprise(prior, codes, torch.tensor([1, -1]))
    log_probs = torch.log_softmax(prior(codes, torch.tensor([1, -1])), dim=1)
    for b, i, j in [(0, 0, 0), (1, 3, 5), (0, 7, 7)]:
        assert bits[b, i, j].item() == pytest.approx(-log_probs[b, codes[b, i, j], i, j].item() / math.log(2))


def test_expected_surprise_is_the_entropy_of_the_prediction():
    prior = tiny_prior(coordinates=3)
    codes = torch.randint(0, 16, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    bits, expected = surprise_and_expected(prior, codes)
    assert torch.equal(bits, code_surprise(prior, codes))
    probs = torch.softmax(prior(codes).double(), dim=1)
    entropy = -(probs * probs.log2()).sum(1)
    assert torch.allclose(expected.double(), entropy, atol=1e-4)
    assert torch.allclose(bits.mean(), expected.mean(), rtol=0.5)  # an untrained prior: its guesses are its own


def test_regional_surprise_pools_excess_over_neighbours_and_ranks_a_cluster_above_a_lone_code():
    expected = np.full((2, 16, 16), 3.0)
    bits = expected.copy()
    assert np.allclose(regional_surprise(bits, expected), 0.0)  # just as hard as expected: nothing
    bits[0, 4:7, 4:7] += 4.0  # a lesion: a 3x3 cluster of surprising codes
    bits[0, 12, 12] += 8.0  # a lone hard code, twice as surprising
    regional = regional_surprise(bits, expected)
    assert regional[0, 5, 5] > regional[0, 12, 12] > 0 and np.allclose(regional[1], 0.0)  # per slice
    assert regional[0].sum() == pytest.approx((bits - expected)[0].sum(), rel=1e-3)  # pooled, not lost (edges: ~)


def test_auc_matches_counting_pairs():
    rng = np.random.default_rng(0)
    positive, negative = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 60).round(1)  # rounded: ties occur
    pairs = (positive[:, None] > negative[None]).mean() + 0.5 * (positive[:, None] == negative[None]).mean()
    assert auc(positive, negative) == pytest.approx(pairs)
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_paste_lesion_puts_a_disc_of_the_asked_contrast_inside_the_brain():
    rng = np.random.default_rng(1)
    image = synthetic_slice(rng, 256)
    for _ in range(5):
        lesioned, mask = paste_lesion(image, rng)
        radius = math.sqrt(mask.sum() / math.pi)
        assert 5.5 <= radius <= 12.5 and (image[mask] > 0).all()
        change = (lesioned[mask].astype(float) - image[mask]) / 255
        assert np.allclose(np.abs(change[(lesioned[mask] > 0) & (lesioned[mask] < 255)]), 0.3, atol=0.003)
        assert np.array_equal(lesioned[~mask], image[~mask])
    assert cells_covering(mask, 32).sum() >= 1


def test_heat_map_marks_surprise_in_red():
    image = np.full((64, 64), 100, np.uint8)
    bits = np.zeros((8, 8))
    bits[2, 3] = 16.0
    rgb = heat_map(bits, image)
    assert rgb.shape == (64, 64, 3)
    assert rgb[2 * 8 + 4, 3 * 8 + 4, 0] == 255 and rgb[0, 0, 0] == rgb[0, 0, 1]  # hot cell red; the rest grey
