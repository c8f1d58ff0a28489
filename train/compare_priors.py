"""Ablation of priors on the same codes: one table, every prior measured the same way in one run.

    python -m train.compare_priors --vqvae assets/models/vqvae --data ../shared/oasis \\
        --prior pixelcnn=assets/models/prior --prior attention=runs/prior-attention/model ... \\
        [-n 500] [--json] [--out runs/compare]

A prior may be named with a guidance, NAME=DIR@G (classifier-free guidance G towards the slice
position, ``vqvae.sampling``): the same weights at several guidances are rows of one table.

For each prior: parameters, training minutes (its stages, followed back through --init),
validate NLL in bits per code, and on n samples at T = 1.0 (slice positions of random validate
slices, decoded by the faithful VQ-VAE): Fréchet distance of the position network's features,
pair MS-SSIM diversity, memorisation (samples closer to a training slice than validate's 99th
percentile), position read-back; then one classifier two-sample test (split by subject, at
256x256 and 64x64, or --sizes) holding every prior's samples below its calibration rows. Sampling speed is
a benchmark (python -m benchmarks.sample_prior), not measured here.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from vqvae.codes import decode_codes, encode_images
from vqvae.data import load_split
from vqvae.generation import (Labelled, SliceCNN, format_two_sample_table, position_accuracy, sample_metrics,
                              two_sample_table)
from vqvae.hub import load_model, load_prior, run_summary, stages_of, training_minutes
from vqvae.model import VQVAE
from vqvae.prior import nll_bits, unigram_bits
from vqvae.sampling import sample_codes
from train.cli import run_or_fail

DEFAULT_FEATURES = Path(__file__).resolve().parents[1] / "assets" / "models" / "position_net"


def named_priors(specs: list[str]) -> dict[str, tuple[str, float]]:
    """["NAME=DIR" or "NAME=DIR@G", ...] -> {name: (dir, guidance)}"""
    priors = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        path, at, guidance = path.partition("@")
        if not sep or not name or not path or (at and not guidance):
            raise ValueError(f"--prior takes NAME=DIR or NAME=DIR@GUIDANCE, not {spec!r}")
        if name in priors:
            raise ValueError(f"two priors named {name!r}")
        try:
            priors[name] = (path, float(guidance) if at else 1.0)
        except ValueError:
            raise ValueError(f"the guidance in {spec!r} is not a number") from None
        if priors[name][1] < 0:
            raise ValueError(f"the guidance in {spec!r} is negative")
    return priors


def compare(args) -> dict:
    priors = named_priors(args.prior)
    vqvae, feature_net = load_model(VQVAE, args.vqvae), load_model(SliceCNN, args.features)
    models = {name: load_prior(path) for name, (path, _) in priors.items()}
    for name, prior in models.items():
        if prior.num_codes != vqvae.num_codes:
            raise ValueError(f"prior {name} models {prior.num_codes} codes but the VQ-VAE has {vqvae.num_codes}")
    say = (lambda *a: None) if args.json else print
    train, validate = (load_split(args.data, split, progress=not args.json) for split in ("train", "validate"))
    train_set, validate_set = Labelled(train.images, train.subjects), Labelled(validate.images, validate.subjects)
    codes = encode_images(vqvae, validate.images)
    positions = validate.positions[torch.randint(len(validate), (args.n,),
                                                 generator=torch.Generator().manual_seed(args.seed))]
    rows, samples = {}, {}
    for name, prior in models.items():
        path, guidance = priors[name]
        stages = stages_of(run_summary(Path(path)))
        grids = sample_codes(prior, args.n, positions, args.temperature, None, args.seed, batch_size=50,
                             guidance=guidance)
        samples[name] = decode_codes(vqvae, grids)
        rows[name] = {"class": type(prior).__name__, "guidance": guidance, "parameters": sum(p.numel() for p in prior.parameters()),
                      "stages": stages, "training_minutes": training_minutes(stages),
                      "nll_bits": nll_bits(prior, codes, validate.positions),
                      "position_within_one": position_accuracy(feature_net, samples[name], positions)["within_one"],
                      **sample_metrics(samples[name], train_set, validate_set, feature_net, args.seed, args.pairs)}
        say(f"{name}: {rows[name]['nll_bits']:.3f} bits/code, Fréchet {rows[name]['frechet']:.1f}")
    pools = tuple(validate.images.shape[-1] // size for size in args.sizes)
    table = two_sample_table({f"samples of {name} vs validate": Labelled(images) for name, images in samples.items()},
                             train_set, validate_set, args.repeats, args.classifier_steps, args.seed, pools)
    for name in rows:
        row = next(r for r in table if r["comparison"] == f"samples of {name} vs validate")
        rows[name]["two_sample"] = {size: row[size]["mean"] for size in row if size != "comparison"}
    report = {"priors": rows, "two_sample": table, "n": args.n, "temperature": args.temperature, "seed": args.seed,
              "uniform_bits": math.log2(vqvae.num_codes), "unigram_bits": unigram_bits(codes, vqvae.num_codes)}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "compare_priors.json").write_text(json.dumps(report, indent=2))
    return report


def ablation_table(report: dict) -> str:
    first = next(iter(report["priors"].values()))
    lines = ["| prior | class | guidance | parameters | training minutes | validate NLL bits/code | Fréchet | "
             "two-sample 256 / 64 | pair MS-SSIM | above train p99 | position within 1 |",
             "| --- |" + " --- |" * 10]
    for name, r in report["priors"].items():
        minutes = "?" if r["training_minutes"] is None else f"{r['training_minutes']:.0f}"
        two = " / ".join(f"{v:.3f}" for v in r["two_sample"].values())
        lines.append(f"| {name} | {r['class']} | {r.get('guidance', 1.0):g} | {r['parameters'] / 1e6:.2f} M | {minutes} | {r['nll_bits']:.3f} | "
                     f"{r['frechet']:.1f} | {two} | {r['ms_ssim_pairs']:.3f} | "
                     f"{r['samples_above_p99']}/{r['images']} | {r['position_within_one']:.3f} |")
    lines.append(f"| real (train vs validate) | | | | | unigram {report['unigram_bits']:.2f} | "
                 f"{first['frechet_reference']:.1f} | see below | {first['ms_ssim_pairs_reference']:.3f} | "
                 f"~1 % | |")
    return "\n".join(lines + ["", format_two_sample_table(report["two_sample"])])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--prior", action="append", required=True,
                        help="NAME=DIR or NAME=DIR@GUIDANCE, once per prior")
    parser.add_argument("--data", required=True)
    parser.add_argument("-n", type=int, default=500, help="samples per prior")
    parser.add_argument("--features", default=str(DEFAULT_FEATURES), help="trained SliceCNN directory")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64], choices=[256, 128, 64, 32],
                        help="resolutions of the two-sample test (the priors share one decoder, so 64x64, where "
                             "it judges anatomy, is the one that tells priors apart; 256x256 judges texture)")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--out", help="folder for compare_priors.json")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.n < 4:
        parser.error("-n must be at least 4")
    report = run_or_fail(compare, args)
    print(json.dumps(report) if args.json else ablation_table(report))


if __name__ == "__main__":
    main()
