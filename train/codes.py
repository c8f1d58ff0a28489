"""Encode splits into code grids with a trained VQ-VAE, so the prior trains without the encoder.

    python -m train.codes --vqvae runs/vqvae/model --data ../shared/oasis --out runs/codes

Writes OUT/codes_<split>.npz (see vqvae/codes.py); train.prior does this itself when needed.
"""
from __future__ import annotations

import argparse

from vqvae.codes import codes_path, save_codes
from vqvae.data import load_split
from vqvae.hub import load_model
from vqvae.model import VQVAE
from train.cli import run_or_fail


def encode_splits(args):
    model = load_model(VQVAE, args.vqvae)
    for split in args.splits:
        slices = load_split(args.data, split, limit=args.limit)
        path = save_codes(model, slices, codes_path(args.out, split), progress=True)
        print(f"wrote {len(slices)} code grids to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--splits", nargs="+", default=["train", "validate"])
    parser.add_argument("--limit", type=int)
    run_or_fail(encode_splits, parser.parse_args(argv))


if __name__ == "__main__":
    main()
