"""Slices -> code grids: encode a split once with a trained VQ-VAE, so the prior trains without
the encoder, and read the result back.

A codes file ``codes_<split>.npz`` holds ``codes`` (N, h, w) uint16, ``subjects`` and
``positions`` (N,) int64 (-1 where the file name is not an OASIS one) and ``names``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import SliceSet
from .images import to_uint8, to_unit
from .model import VQVAE


@torch.no_grad()
def encode_images(model: VQVAE, images: torch.Tensor, batch_size: int = 64,
                  progress: bool = False) -> torch.Tensor:
    """uint8 slices (N, 1, H, W) -> code grids (N, H/f, W/f) int64."""
    model.eval()
    device = next(model.parameters()).device
    batches = [model.encode(to_unit(images[i:i + batch_size].to(device))).cpu()
               for i in tqdm(range(0, len(images), batch_size), desc="encoding", disable=not progress)]
    return torch.cat(batches)


@torch.no_grad()
def decode_codes(model: VQVAE, codes: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """Code grids (N, h, w) -> uint8 slices (N, 1, H, W), rounded like real slices."""
    return torch.cat([torch.from_numpy(to_uint8(model.decode(codes[i:i + batch_size])))
                      for i in range(0, len(codes), batch_size)])


def codes_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"codes_{split}.npz"


def save_codes(model: VQVAE, slices: SliceSet, path: str | Path, progress: bool = False) -> Path:
    """Encode a loaded split and write its codes file."""
    codes = encode_images(model, slices.images, progress=progress)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, codes=codes.numpy().astype(np.uint16), subjects=slices.subjects.numpy(),
                        positions=slices.positions.numpy(), names=np.array([p.name for p in slices.paths]))
    return path


def load_codes(path: str | Path) -> dict[str, torch.Tensor]:
    """-> {"codes": (N, h, w) int64, "positions": (N,) int64, "subjects": (N,) int64}."""
    with np.load(path, allow_pickle=False) as archive:
        return {"codes": torch.from_numpy(archive["codes"].astype(np.int64)),
                "positions": torch.from_numpy(archive["positions"]),
                "subjects": torch.from_numpy(archive["subjects"])}


def code_counts(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each of the ``num_codes`` codes occurs in ``codes``."""
    return torch.bincount(codes.flatten(), minlength=num_codes)


def slice_pairs(subjects: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (current, below) of every slice k >= 1 whose slice k - 1 of the same subject is
    in the set: the training pairs of a prior conditioned on the slice below."""
    where = {(int(s), int(k)): i for i, (s, k) in enumerate(zip(subjects.tolist(), positions.tolist())) if s >= 0}
    pairs = [(i, where[(s, k - 1)]) for (s, k), i in where.items() if k >= 1 and (s, k - 1) in where]
    if not pairs:
        raise ValueError("no pairs of neighbouring slices (case_<subject>_slice_<k> and k - 1) in these codes")
    current, below = zip(*sorted(pairs))
    return torch.tensor(current), torch.tensor(below)
