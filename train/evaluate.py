"""Evaluate a trained VQ-VAE's reconstructions on a split.

    python -m train.evaluate --model runs/vqvae/model --data ../shared/oasis --split validate [--json]
        [--search-sweeps 2 --search-candidates 4]

SSIM is scikit-image's structural_similarity(x, y, data_range=1.0) on [0, 1] floats; "in-brain"
averages the SSIM map over the input's non-zero pixels dilated by 3, which the empty background
cannot inflate. Codebook usage is the fraction of the K codes used on the split.
``--search-sweeps N`` reconstructs from searched codes (``vqvae/code_search.py``: the same
codebook and bit rate, chosen for the decoded SSIM) instead of ``encode``'s nearest ones.
"""
from __future__ import annotations

import argparse
import json
from functools import partial

from vqvae.data import load_split
from vqvae.hub import load_model
from vqvae.metrics import evaluate_reconstructions
from vqvae.model import VQVAE
from train.cli import add_search_arguments, run_or_fail, searched_codes

ROWS = ("images", "ssim", "ssim_std", "ssim_min", "ssim_brain", "psnr", "mse", "usage", "perplexity",
        "bits_per_pixel", "search_sweeps")


def evaluate(args) -> dict:
    model = load_model(VQVAE, args.model)
    split = load_split(args.data, args.split, limit=args.limit, progress=not args.json)
    metrics = evaluate_reconstructions(model, split.images, progress=not args.json,
                                       encode=partial(searched_codes, model, args=args))
    return {**metrics, "split": args.split, "model": args.model, "codes": model.num_codes,
            "bits_per_pixel": model.bits_per_pixel, "search_sweeps": max(args.search_sweeps, 0),
            "search_candidates": args.search_candidates if args.search_sweeps > 0 else 1}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (config.json + model.safetensors)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="validate", choices=("train", "validate", "test"))
    parser.add_argument("--limit", type=int, help="only the first N images")
    add_search_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    metrics = run_or_fail(evaluate, args)
    if args.json:
        print(json.dumps(metrics))
        return
    for key in ROWS:
        value = metrics[key]
        print(f"{key:>15}  {value:.4f}" if isinstance(value, float) else f"{key:>15}  {value}")


if __name__ == "__main__":
    main()
