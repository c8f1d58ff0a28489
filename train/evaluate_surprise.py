"""Does the prior's surprise find lesions? Synthetic lesions pasted into validate slices.

    python -m train.evaluate_surprise --vqvae assets/models/vqvae --prior assets/models/prior \\
        --data ../shared/oasis -n 200 [--out assets/models/prior] [--json]

Each of n validate slices (drawn with a seed) gets one disc of radius 6-12 pixels, 0.3 of full
scale brighter or darker than the slice there, well inside the brain (vqvae/surprise.py). The
lesioned slice is encoded and each code's surprise (negative log-likelihood under the prior, bits)
is taken from one forward pass, given the slice position the position network reads from the
slice (as the app does: an upload's position is unknown); the AUC with no position and with the
true one are reported beside it.
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
from vqvae.hub import load_model, load_prior
from vqvae.model import VQVAE
from vqvae.generation import SliceCNN, batched
from vqvae.surprise import (SURPRISE_REFERENCE, auc, cells_covering, code_surprise, paste_lesion,
                            regional_surprise, surprise_and_expected)
from train.cli import run_or_fail

DEFAULT_FEATURES = Path(__file__).resolve().parents[1] / "assets" / "models" / "position_net"


def evaluate(args) -> dict:
    vqvae, prior = load_model(VQVAE, args.vqvae), load_prior(args.prior)
    validate = load_split(args.data, "validate", progress=not args.json)
    position_net = load_model(SliceCNN, args.features)
    reference_positions = {"none": None, "true": validate.positions,
                           "predicted": batched(position_net, validate.images).argmax(1)}[args.position]
    totals = code_surprise(prior, encode_images(vqvae, validate.images), reference_positions).sum(dim=(1, 2)).numpy()
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(validate), size=min(args.n, len(validate)), replace=False)
    scores = {mode: ([], []) for mode in ("none", "predicted", "true")}  # regional surprise, by position given
    nll_scores = ([], [])  # the NLL alone, at --position
    for index in picks:
        image = validate.images[index, 0].numpy()
        lesioned, mask = paste_lesion(image, rng)
        slice_ = torch.from_numpy(lesioned)[None, None]
        codes = encode_images(vqvae, slice_)
        positions = {"none": None, "true": validate.positions[index:index + 1],
                     "predicted": batched(position_net, slice_).argmax(1)}
        lesion = cells_covering(mask, codes.shape[-1])
        brain = cells_covering(image > 0, codes.shape[-1], min_fraction=0.5) & ~lesion
        for mode, position in positions.items():
            bits, expected = (t[0].numpy() for t in surprise_and_expected(prior, codes, position))
            regional = regional_surprise(bits, expected)
            scores[mode][0].append(regional[lesion])
            scores[mode][1].append(regional[brain])
            if mode == args.position:
                nll_scores[0].append(bits[lesion])
                nll_scores[1].append(bits[brain])
    positive, negative = (np.concatenate(part) for part in scores[args.position])
    return {"slices": len(picks), "lesion_codes": len(positive), "other_in_brain_codes": len(negative),
            "position": args.position, "auc": auc(positive, negative),
            "auc_nll": auc(*(np.concatenate(part) for part in nll_scores)),
            "lesion_regional_mean": float(positive.mean()), "other_regional_mean": float(negative.mean()),
            **{f"auc_position_{mode}": auc(np.concatenate(p), np.concatenate(n)) for mode, (p, n) in scores.items()},
            "lesion_bits_mean": float(np.concatenate(nll_scores[0]).mean()),
            "other_bits_mean": float(np.concatenate(nll_scores[1]).mean()),
            "reference_total_bits_mean": float(totals.mean()), "reference_total_bits_std": float(totals.std()),
            "reference_total_bits_p99": float(np.quantile(totals, 0.99)), "reference_slices": len(totals)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--prior", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("-n", type=int, default=200, help="validate slices that get a lesion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--position", choices=("predicted", "none", "true"), default="predicted",
                        help="slice position given to the prior: read by the position network (as the app "
                             "does), none, or the true one (an upper bound)")
    parser.add_argument("--features", default=str(DEFAULT_FEATURES), help="the position network")
    parser.add_argument("--out", help="write surprise_reference.json (the app's reference) into this folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.out:  # made before the evaluation, so a missing folder cannot lose its result at the end
        Path(args.out).mkdir(parents=True, exist_ok=True)
    report = run_or_fail(evaluate, args)
    if args.out:
        reference = {k.removeprefix("reference_"): v for k, v in report.items() if k.startswith("reference_")}
        reference["position"] = report["position"]
        (Path(args.out) / SURPRISE_REFERENCE).write_text(json.dumps(reference, indent=2))
    if args.json:
        print(json.dumps(report))
        return
    print("| lesions | lesion codes | other in-brain codes | per-code AUC, regional (app) | per-code AUC, NLL alone | "
          "regional bits, lesion / other | NLL bits, lesion / other | validate total bits (mean ± sd, p99) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {report['slices']} | {report['lesion_codes']} | {report['other_in_brain_codes']} | {report['auc']:.3f} | "
          f"{report['auc_nll']:.3f} | {report['lesion_regional_mean']:.2f} / {report['other_regional_mean']:.2f} | "
          f"{report['lesion_bits_mean']:.2f} / {report['other_bits_mean']:.2f} | "
          f"{report['reference_total_bits_mean']:.0f} ± {report['reference_total_bits_std']:.0f}, "
          f"{report['reference_total_bits_p99']:.0f} |")


if __name__ == "__main__":
    main()
