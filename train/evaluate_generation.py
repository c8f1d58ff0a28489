"""Generation metrics of a VQ-VAE + prior pair against the validate split (see train/generation.py).

    python -m train.evaluate_generation --vqvae assets/models/vqvae --prior assets/models/prior \\
        --data ../shared/oasis -n 500 [--json] [--out runs/generation]

Samples are drawn with slice positions taken from random validate slices, so both sets cover
the same positions; they are decoded and rounded to 8 bits like the real slices. Prints a table
(and with --json one JSON object); --out also keeps the samples' grid and the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from PIL import Image

from vqvae.data import DataError, load_split
from vqvae.demo import to_uint8
from vqvae.model import VQVAE
from vqvae.prior import GatedPixelCNN
from train.cli import fail, load_model
from train.codes import encode_images
from train.generation import SliceCNN, batched, generation_report
from train.position_net import position_accuracy
from train.prior import nll_bits, unigram_bits
from train.sample import generate, mosaic

DEFAULT_FEATURES = Path(__file__).resolve().parents[1] / "assets" / "models" / "position_net"


def draw_samples(vqvae: VQVAE, prior: GatedPixelCNN, positions: torch.Tensor, temperature: float,
                 top_k: int | None, seed: int, batch_size: int = 50) -> torch.Tensor:
    """uint8 samples (N, 1, H, W), sample i at slice position positions[i]."""
    batches = []
    for k, start in enumerate(range(0, len(positions), batch_size)):
        chunk = positions[start:start + batch_size]
        images, _ = generate(vqvae, prior, len(chunk), chunk, temperature, top_k, seed + k)
        batches.append(torch.from_numpy(to_uint8(images)))
    return torch.cat(batches)


def table(report: dict) -> str:
    r = report
    rows = [
        ("prior NLL, bits/code (validate codes)", f"{r['nll_bits']:.3f}",
         f"uniform {r['uniform_bits']:.2f}, unigram {r['unigram_bits']:.2f}", "below unigram"),
        ("Fréchet distance (SliceCNN features)", f"{r['frechet']:.2f}",
         f"train vs validate {r['frechet_reference']:.2f}", f"<= 3x ({3 * r['frechet_reference']:.2f})"),
        ("diversity: mean MS-SSIM of pairs", f"{r['ms_ssim_pairs']:.3f}",
         f"validate pairs {r['ms_ssim_pairs_reference']:.3f}", "close to reference"),
        ("nearest-train SSIM, mean / max", f"{r['nearest_train_ssim_mean']:.3f} / {r['nearest_train_ssim_max']:.3f}",
         f"validate mean {r['nearest_train_ssim_mean_reference']:.3f}, "
         f"p99 {r['nearest_train_ssim_p99_reference']:.3f}", ""),
        ("samples above validate's p99 (copies?)", f"{r['samples_above_p99']}", "", "0"),
        ("classifier two-sample accuracy", f"{r['two_sample_accuracy']:.3f}",
         f"train vs validate {r['two_sample_accuracy_reference']:.3f}", "<= 0.70"),
        ("SliceCNN position accuracy (within 1)", f"{r['sample_position_within_one']:.3f}",
         f"validate {r['feature_net_within_one']:.3f} (exact {r['feature_net_accuracy']:.3f})",
         "conditioning is followed"),
    ]
    if "two_sample_accuracy_reconstructions" in r:  # what even a perfect prior would score
        rows.insert(2, ("Fréchet of the VQ-VAE's validate reconstructions", f"{r['frechet_reconstructions']:.2f}",
                        "(a perfect prior's floor)", ""))
        rows.insert(-1, ("two-sample accuracy of validate reconstructions",
                         f"{r['two_sample_accuracy_reconstructions']:.3f}", "(a perfect prior's floor)", ""))
    lines = ["| metric | samples | real reference | target |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--prior", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("-n", type=int, default=500, help="number of samples")
    parser.add_argument("--features", default=str(DEFAULT_FEATURES), help="trained SliceCNN directory")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-steps", type=int, default=300, help="training steps of the two-sample test")
    parser.add_argument("--pairs", type=int, default=500, help="random pairs for the MS-SSIM diversity")
    parser.add_argument("--limit", type=int, help="only the first N images of each split")
    parser.add_argument("--out", help="folder for report.json and samples.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.n < 4:
        fail("-n must be at least 4 (two per half of the two-sample test)")
    vqvae, prior = load_model(VQVAE, args.vqvae), load_model(GatedPixelCNN, args.prior)
    feature_net = load_model(SliceCNN, args.features)
    if vqvae.num_codes != prior.num_codes:
        fail(f"the prior models {prior.num_codes} codes but the VQ-VAE has {vqvae.num_codes}")
    try:
        train, validate = (load_split(args.data, split, limit=args.limit, progress=not args.json)
                           for split in ("train", "validate"))
    except DataError as error:
        fail(str(error))
    say = (lambda *a: None) if args.json else print

    codes = encode_images(vqvae, validate.images, progress=not args.json)
    report = {"nll_bits": nll_bits(prior, codes, validate.positions),
              "uniform_bits": math.log2(prior.num_codes),
              "unigram_bits": unigram_bits(codes, prior.num_codes)}
    generator = torch.Generator().manual_seed(args.seed)
    positions = validate.positions[torch.randint(len(validate), (args.n,), generator=generator)]
    start = time.perf_counter()
    samples = draw_samples(vqvae, prior, positions, args.temperature, args.top_k, args.seed)
    say(f"sampled {args.n} slices in {time.perf_counter() - start:.0f} s")
    reconstructions = torch.cat([torch.from_numpy(to_uint8(vqvae.decode(codes[i:i + 50])))
                                 for i in range(0, len(codes), 50)])
    report.update(generation_report(samples, train.images, validate.images, feature_net, seed=args.seed,
                                    classifier_steps=args.classifier_steps, pairs=args.pairs,
                                    reconstructions=reconstructions))
    feature = position_accuracy(feature_net, validate.images, validate.positions)
    report["feature_net_accuracy"], report["feature_net_within_one"] = feature["accuracy"], feature["within_one"]
    report["sample_position_within_one"] = position_accuracy(feature_net, samples, positions)["within_one"]
    report.update(vqvae=args.vqvae, prior=args.prior, temperature=args.temperature, top_k=args.top_k,
                  seed=args.seed)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        order = positions[:64].argsort()  # the first 64 samples, by slice position
        Image.fromarray(mosaic(samples[:64][order][:, 0].numpy(), columns=8)).save(out / "samples.png")
    if args.json:
        print(json.dumps(report))
    else:
        print(f"\n{args.n} samples (temperature {args.temperature}, top-k {args.top_k}) vs validate")
        print(table(report))


if __name__ == "__main__":
    main()
