"""Does the prior's surprise find lesions? Synthetic lesions pasted into validate slices.

    python -m train.evaluate_surprise --vqvae assets/models/vqvae --prior assets/models/prior \\
        --data ../shared/oasis -n 200 [--out assets/models/prior] [--json]

Each of n validate slices (drawn with a seed) gets one disc of radius 6-12 pixels, 0.3 of full
scale brighter or darker than the slice there, well inside the brain (vqvae/surprise.py). The
lesioned slice is encoded and each code's surprise (negative log-likelihood under the prior, bits,
no slice position: as the app, which does not know an upload's) is taken from one forward pass.
Reports the pooled per-code AUC of codes covering the lesion (>= 25 % of the cell) against the
other in-brain codes of the same slices, and the total surprise of the unaltered validate slices,
the reference the app shows beside an upload's (with --out, written there as
surprise_reference.json).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vqvae.codes import encode_images
from vqvae.data import load_split
from vqvae.hub import load_model
from vqvae.model import VQVAE
from vqvae.prior import GatedPixelCNN
from vqvae.surprise import (SURPRISE_REFERENCE, auc, cell_statistics, cells_covering, code_surprise, normalised,
                            paste_lesion)
from train.cli import run_or_fail


def evaluate(args) -> dict:
    vqvae, prior = load_model(VQVAE, args.vqvae), load_model(GatedPixelCNN, args.prior)
    validate = load_split(args.data, "validate", progress=not args.json)
    totals = code_surprise(prior, encode_images(vqvae, validate.images)).sum(dim=(1, 2)).numpy()
    # what each cell's surprise is on normal slices: from train, never from the slices judged
    train = load_split(args.data, "train", progress=not args.json)
    normal = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:args.normal]
    mean, std = cell_statistics(code_surprise(prior, encode_images(vqvae, train.images[normal])))
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(validate), size=min(args.n, len(validate)), replace=False)
    lesion_bits, other_bits, lesion_z, other_z = [], [], [], []
    for index in picks:
        image = validate.images[index, 0].numpy()
        lesioned, mask = paste_lesion(image, rng)
        codes = encode_images(vqvae, torch.from_numpy(lesioned)[None, None])
        bits = code_surprise(prior, codes)[0].numpy()
        grid = bits.shape[0]
        lesion = cells_covering(mask, grid)
        brain = cells_covering(image > 0, grid, min_fraction=0.5) & ~lesion
        lesion_bits.append(bits[lesion])
        other_bits.append(bits[brain])
        scores = normalised(bits, mean, std)
        lesion_z.append(scores[lesion])
        other_z.append(scores[brain])
    positive, negative = np.concatenate(lesion_bits), np.concatenate(other_bits)
    return {"slices": len(picks), "lesion_codes": len(positive), "other_in_brain_codes": len(negative),
            "auc": auc(positive, negative), "auc_normalised": auc(np.concatenate(lesion_z), np.concatenate(other_z)),
            "cell_mean": mean.tolist(), "cell_std": std.tolist(), "lesion_bits_mean": float(positive.mean()),
            "other_bits_mean": float(negative.mean()),
            "reference_total_bits_mean": float(totals.mean()), "reference_total_bits_std": float(totals.std()),
            "reference_total_bits_p99": float(np.quantile(totals, 0.99)), "reference_slices": len(totals)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--prior", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("-n", type=int, default=200, help="validate slices that get a lesion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--normal", type=int, default=1000, help="train slices for each cell's normal surprise")
    parser.add_argument("--out", help="write surprise_reference.json (the app's reference) into this folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run_or_fail(evaluate, args)
    if args.out:
        reference = {k.removeprefix("reference_"): v for k, v in report.items() if k.startswith("reference_")}
        (Path(args.out) / SURPRISE_REFERENCE).write_text(json.dumps(reference, indent=2))
    if args.json:
        print(json.dumps(report))
        return
    print("| lesions | lesion codes | other in-brain codes | per-code AUC | bits, lesion / other | "
          "validate total bits (mean ± sd, p99) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {report['slices']} | {report['lesion_codes']} | {report['other_in_brain_codes']} | {report['auc']:.3f} | "
          f"{report['lesion_bits_mean']:.2f} / {report['other_bits_mean']:.2f} | "
          f"{report['reference_total_bits_mean']:.0f} ± {report['reference_total_bits_std']:.0f}, "
          f"{report['reference_total_bits_p99']:.0f} |")


if __name__ == "__main__":
    main()
