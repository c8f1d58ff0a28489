"""Pixels: the one conversion between uint8 slices and [0, 1] floats, and the pictures made of
them (error heat maps, mosaics of many slices).

Slices are stored as uint8 (in memory a 9664-slice split is ~630 MB, not 2.5 GB), models see
floats in [0, 1], and every output goes back to uint8 with rounding and clipping.
"""
from __future__ import annotations

import numpy as np
import torch


def to_unit(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """uint8 pixels -> floats in [0, 1]: float32 for a tensor, float64 for an array (the
    precision scikit-image's metrics use)."""
    if isinstance(images, torch.Tensor):
        return images.float().div(255.0)
    return np.asarray(images, dtype=np.float64) / 255.0


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (tensor or array) -> uint8 array, rounded, out-of-range values clipped."""
    array = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)


def slice_tensor(image: np.ndarray) -> torch.Tensor:
    """One (H, W) uint8 slice -> the (1, 1, H, W) float batch a model takes. A copy: an upload's
    array may be read-only, which torch.from_numpy warns about (and must never write through)."""
    return to_unit(torch.from_numpy(np.array(image)))[None, None]


def hot(level: np.ndarray) -> np.ndarray:
    """Levels (H, W), clipped to [0, 1], as the black -> red -> yellow colour ramp: float RGB."""
    level = np.clip(level, 0, 1)
    return np.stack([np.clip(2 * level, 0, 1), np.clip(2 * level - 1, 0, 1), np.zeros_like(level)], axis=-1)


def error_map(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """|original - reconstruction| of two uint8 images as a heat map (``hot``), uint8 RGB.
    Scaled so an error of 0.25 (a quarter of the range) is full brightness."""
    return to_uint8(hot(np.abs(to_unit(original) - to_unit(reconstruction)) / 0.25))


def mosaic(images: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """(N, H, W) uint8 -> one image, near-square (or ``columns`` wide), black gaps between tiles."""
    n, h, w = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.zeros((rows * (h + gap) - gap, columns * (w + gap) - gap), dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return grid
