"""Volumes: stacks of 256x256 axial slices written as NIfTI-1 files that MRI viewers open, in
the orientation the app's NIfTI reader (``vqvae/upload.py``) shows them.

A volume here is uint8 (slices, 256, 256), slice k = position k of the OASIS release (k = 0..31,
bottom to top). In the file the axial slices are on the last axis, each rotated so that the
reader's ``np.rot90`` gives the slice back as displayed. Voxel spacing: 1 x 1 x 1 mm, nominal:
the 2-D release resampled each slice to 256x256 and does not record its slice spacing, so no
truer figure is known; the header says so in its description field.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SPACING_MM = (1.0, 1.0, 1.0)


def to_nifti(volume: np.ndarray):
    """uint8 (slices, H, W) -> a nibabel Nifti1Image of shape (W, H, slices), uint8."""
    import nibabel
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (slices, H, W) volume, got {volume.dtype} {volume.shape}")
    data = np.stack([np.rot90(image, -1) for image in volume], axis=-1)  # the reader rotates back
    image = nibabel.Nifti1Image(np.ascontiguousarray(data), np.diag([*SPACING_MM, 1.0]))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"brainvq sample; spacing nominal 1 mm"
    return image


def write_nifti(volume: np.ndarray, path: str | Path) -> Path:
    import nibabel
    path = Path(path)
    nibabel.save(to_nifti(volume), str(path))
    return path


def strip(volume: np.ndarray, every: int = 4) -> np.ndarray:
    """Every ``every``-th slice side by side, uint8: a PNG preview of a volume."""
    picked = volume[::every]
    return np.concatenate(list(picked), axis=1)


def real_volumes(images, subjects, positions) -> np.ndarray:
    """A split's slices regrouped into volumes: uint8 (subjects, slices, H, W), k in order; only
    subjects with every position 0..max."""
    import torch
    count = int(positions.max()) + 1
    volumes = []
    for subject in torch.unique(subjects).tolist():
        mine = (subjects == subject).nonzero()[:, 0]
        order = mine[positions[mine].argsort()]
        if positions[order].tolist() == list(range(count)):
            volumes.append(images[order, 0].numpy())
    return np.stack(volumes)


def volume_similarity(volumes: np.ndarray) -> dict[str, float]:
    """Mean SSIM (scikit-image's definition, ``ssim_torch``) between consecutive slices of each
    volume, and between its first and last slice: a volume must hang together (high
    consecutive SSIM) and still change from bottom to top (first-vs-last well below it)."""
    import torch

    from .images import to_unit
    from .metrics import ssim_torch
    x = to_unit(torch.from_numpy(np.asarray(volumes)))  # (V, S, H, W)
    consecutive = torch.stack([ssim_torch(v[:-1, None], v[1:, None]).mean() for v in x])
    ends = ssim_torch(x[:, :1], x[:, -1:])
    return {"consecutive_ssim": float(consecutive.mean()), "first_last_ssim": float(ends.mean()),
            "volumes": len(x)}
