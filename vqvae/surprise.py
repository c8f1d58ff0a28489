"""Surprise: how unlikely each code of a slice is under the prior, the way VQ-VAE + autoregressive
prior models flag anomalies in brain MRI (Pinaya et al. 2022; MONAI's "anomaly detection with
VQ-VAE + transformers"). A lesion the training brains never had becomes codes the prior does not
expect, so their negative log-likelihood is high.

One forward pass of the prior gives every code's NLL (the logits at (i, j) depend only on codes
before it). A causal prior also spreads surprise below and to the right of an anomaly: what it
expected next was conditioned on the odd codes. The map shows that as it is.

The map the app shows is ``regional_surprise``: each code's NLL minus the entropy of the prior's
prediction there (the NLL it expected: cortex is always hard to predict, a ventricle edge rarely
is), averaged over a Gaussian neighbourhood of ``REGION_SIGMA`` code cells. A lesion a few
pixels across changes a few neighbouring codes; the neighbourhood pools them and damps single
hard codes. On 200 validate slices with synthetic lesions this raised the per-code AUC from
0.86 (NLL alone) to 0.95 (README: surprise). Same forward pass, no extra cost.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import rankdata

from .images import hot, to_uint8, to_unit
from .prior import GatedPixelCNN, code_nll

SURPRISE_REFERENCE = "surprise_reference.json"  # beside a prior: validate's total surprise, for the app
REGION_SIGMA = 1.0  # code cells: the neighbourhood ``regional_surprise`` pools (8 pixels at f = 8)


@torch.no_grad()
def surprise_and_expected(prior: GatedPixelCNN, codes: torch.Tensor,
                          positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Code grids (B, H, W) -> (each code's negative log-likelihood, the entropy of the prior's
    prediction at that code: the NLL it expected), both in bits (B, H, W); one forward pass."""
    prior.eval()
    logits = prior(codes, positions).float()
    log_probs = torch.log_softmax(logits, dim=1)
    expected = -(log_probs.exp() * log_probs).sum(dim=1) / math.log(2)
    return code_nll(logits, codes, reduction="none") / math.log(2), expected


def code_surprise(prior: GatedPixelCNN, codes: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Code grids (B, H, W) -> each code's negative log-likelihood in bits (B, H, W)."""
    return surprise_and_expected(prior, codes, positions)[0]


def regional_surprise(bits: np.ndarray, expected: np.ndarray, sigma: float = REGION_SIGMA) -> np.ndarray:
    """Surprise beyond what the prior expected (bits - expected), averaged over a Gaussian
    neighbourhood of ``sigma`` code cells: (..., H, W) -> (..., H, W)."""
    excess = np.asarray(bits, dtype=np.float64) - np.asarray(expected, dtype=np.float64)
    spread = (0,) * (excess.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(excess, spread, mode="nearest")


def heat_map(bits: np.ndarray, image: np.ndarray, full_scale: float = 16.0) -> np.ndarray:
    """Per-code surprise (h, w) laid over the slice (H, W) uint8: grey slice, surprise in red to
    yellow, ``full_scale`` bits at full brightness. uint8 RGB."""
    scale = image.shape[0] // bits.shape[0]
    grey = np.repeat(to_unit(image)[..., None], 3, axis=2) * 0.6
    return to_uint8(grey + hot(np.kron(bits, np.ones((scale, scale))) / full_scale))


def paste_lesion(image: np.ndarray, rng: np.random.Generator, radius=(6, 12), contrast: float = 0.3):
    """A synthetic lesion: a disc of random radius, ``contrast`` of full scale brighter or darker
    than the slice there, at a random position well inside the brain. -> (image, lesion mask)."""
    brain = ndimage.binary_erosion(image > 0, iterations=radius[1] + 2)
    if not brain.any():
        raise ValueError("slice has no brain to paste a lesion into")
    ys, xs = np.nonzero(brain)
    pick = rng.integers(len(ys))
    r = rng.uniform(*radius)
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    mask = (yy - ys[pick]) ** 2 + (xx - xs[pick]) ** 2 <= r * r
    sign = rng.choice([-1.0, 1.0])
    changed = image.astype(np.float32) / 255.0
    changed[mask] = changed[mask] + sign * contrast
    return to_uint8(changed), mask


def cells_covering(mask: np.ndarray, grid: int, min_fraction: float = 0.25) -> np.ndarray:
    """The code cells (grid, grid) at least ``min_fraction`` covered by a pixel mask."""
    scale = mask.shape[0] // grid
    covered = mask.reshape(grid, scale, grid, scale).mean(axis=(1, 3))
    return covered >= min_fraction


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half):
    the Mann-Whitney form of the ROC AUC."""
    r = rankdata(np.concatenate([positive, negative]))[:len(positive)]
    return float((r.sum() - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))
