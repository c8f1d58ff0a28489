"""Encode a split into code grids with a trained VQ-VAE, so the prior trains without the encoder.

    python -m train.codes --vqvae runs/vqvae/model --data ../shared/oasis --out runs/codes

Writes OUT/codes_<split>.npz with ``codes`` (N, h, w) uint16, ``subjects`` and ``positions``
(N,) int64 (-1 where the file name is not an OASIS one) and ``names``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vqvae.data import DataError, load_split
from vqvae.model import VQVAE
from train.cli import fail, load_model


@torch.no_grad()
def encode_images(model: VQVAE, images: torch.Tensor, batch_size: int = 64,
                  progress: bool = True) -> torch.Tensor:
    """uint8 slices (N, 1, H, W) -> code grids (N, H/f, W/f) int64."""
    model.eval()
    device = next(model.parameters()).device
    batches = [model.encode(images[i:i + batch_size].to(device).float().div_(255.0)).cpu()
               for i in tqdm(range(0, len(images), batch_size), desc="encoding", disable=not progress)]
    return torch.cat(batches)


def codes_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"codes_{split}.npz"


def extract(model: VQVAE, data: str, split: str, out: str | Path, limit: int | None = None,
            progress: bool = True) -> Path:
    slices = load_split(data, split, limit=limit, progress=progress)
    codes = encode_images(model, slices.images, progress=progress)
    path = codes_path(out, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, codes=codes.numpy().astype(np.uint16), subjects=slices.subjects.numpy(),
                        positions=slices.positions.numpy(), names=np.array([p.name for p in slices.paths]))
    if progress:
        print(f"wrote {len(codes)} code grids of {tuple(codes.shape[1:])} to {path}")
    return path


def load_codes(path: str | Path) -> dict[str, torch.Tensor]:
    """-> {"codes": (N, h, w) int64, "positions": (N,) int64, "subjects": (N,) int64}."""
    with np.load(path, allow_pickle=False) as archive:
        return {"codes": torch.from_numpy(archive["codes"].astype(np.int64)),
                "positions": torch.from_numpy(archive["positions"]),
                "subjects": torch.from_numpy(archive["subjects"])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--splits", nargs="+", default=["train", "validate"])
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    model = load_model(VQVAE, args.vqvae)
    try:
        for split in args.splits:
            extract(model, args.data, split, args.out, limit=args.limit)
    except DataError as error:
        fail(str(error))


if __name__ == "__main__":
    main()
