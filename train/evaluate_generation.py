"""Generation metrics of a VQ-VAE + prior pair against the validate split (see vqvae/generation.py).

    python -m train.evaluate_generation --vqvae assets/models/vqvae --prior assets/models/prior \\
        --data ../shared/oasis -n 500 [--realistic DIR] [--bands 1,2] [--json] [--out runs/generation]

Samples are drawn with slice positions taken from random validate slices, so both sets cover
the same positions; they are decoded and rounded to 8 bits like the real slices. The two-sample
test splits by subject and runs at 256x256 and 64x64, beside its calibration rows; --bands adds
rows that keep each decoder's image only below a blur and the real slice's detail above it. Prints a
table (with --json one JSON object); --out also keeps the samples' grid and the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from PIL import Image

from vqvae.codes import decode_codes, encode_images
from vqvae.data import load_split
from vqvae.generation import (Labelled, SliceCNN, band_swap, generation_report, generation_table,
                              position_accuracy)
from vqvae.hub import load_model, load_prior, load_realistic
from vqvae.images import mosaic
from vqvae.model import VQVAE
from vqvae.prior import nll_bits, unigram_bits
from vqvae.sampling import sample_codes
from train.cli import add_guidance_argument, run_or_fail

DEFAULT_FEATURES = Path(__file__).resolve().parents[1] / "assets" / "models" / "position_net"


def parse_sigmas(text: str) -> tuple[float, ...]:
    try:
        sigmas = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,2, got {text!r}") from None
    if any(not sigma > 0 for sigma in sigmas):
        raise argparse.ArgumentTypeError(f"blur sigmas must be positive, got {text!r}")
    return sigmas


def evaluate(args) -> dict:
    if args.n < 4:
        raise ValueError("-n must be at least 4")
    vqvae, prior = load_model(VQVAE, args.vqvae), load_prior(args.prior)
    feature_net = load_model(SliceCNN, args.features)
    if vqvae.num_codes != prior.num_codes:
        raise ValueError(f"the prior models {prior.num_codes} codes but the VQ-VAE has {vqvae.num_codes}")
    train, validate = (load_split(args.data, split, limit=args.limit, progress=not args.json)
                       for split in ("train", "validate"))
    say = (lambda *a: None) if args.json else print

    codes = encode_images(vqvae, validate.images)
    report = {"nll_bits": nll_bits(prior, codes, validate.positions),
              "uniform_bits": math.log2(prior.num_codes), "unigram_bits": unigram_bits(codes, prior.num_codes)}
    generator = torch.Generator().manual_seed(args.seed)
    positions = validate.positions[torch.randint(len(validate), (args.n,), generator=generator)]
    start = time.perf_counter()
    sample_grids = sample_codes(prior, args.n, positions, args.temperature, args.top_k, args.seed, batch_size=50,
                                guidance=args.guidance)
    samples = decode_codes(vqvae, sample_grids)
    say(f"sampled {args.n} slices in {time.perf_counter() - start:.0f} s")
    also = {}
    reconstructions = decode_codes(vqvae, codes)
    decoders = {"faithful": reconstructions}
    if args.realistic:  # the same codes and samples, drawn by the adversarially trained decoder
        realistic = load_realistic(vqvae, args.realistic)  # drawn as the app draws it
        report["realistic_precision"] = realistic.decoder.detail.precision if realistic.decoder.detail else "fp32"
        recs = Labelled(decode_codes(realistic, codes), validate.subjects)
        decoded = Labelled(decode_codes(realistic, sample_grids))
        also = {"realistic reconstructions vs validate": recs,
                "samples decoded by the realistic decoder vs validate": decoded,
                "realistic decoder's samples vs its reconstructions (the prior's share)": (decoded, recs)}
        decoders["realistic"] = recs.images
    for sigma in args.bands:  # which band gives each decoder away (generation.band_swap)
        for name, images in decoders.items():
            also[f"{name} reconstructions below a {sigma:g}-pixel blur + the real slice's finer detail vs validate"] = \
                Labelled(band_swap(images, validate.images, sigma), validate.subjects)
    report.update(generation_report(samples, Labelled(train.images, train.subjects),
                                    Labelled(validate.images, validate.subjects), feature_net, seed=args.seed,
                                    classifier_steps=args.classifier_steps, pairs=args.pairs,
                                    repeats=args.repeats, reconstructions=reconstructions, also=also))
    feature = position_accuracy(feature_net, validate.images, validate.positions)
    report["feature_net_accuracy"], report["feature_net_within_one"] = feature["accuracy"], feature["within_one"]
    report["sample_position_within_one"] = position_accuracy(feature_net, samples, positions)["within_one"]
    report.update(vqvae=args.vqvae, prior=args.prior, temperature=args.temperature, top_k=args.top_k,
                  guidance=args.guidance, seed=args.seed, bands=list(args.bands))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        order = positions[:64].argsort()  # the first 64 samples, by slice position
        Image.fromarray(mosaic(samples[:64][order][:, 0].numpy(), columns=8)).save(out / "samples.png")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--prior", required=True)
    parser.add_argument("--realistic", help="a realistic decoder on the VQ-VAE's codes: its reconstructions and "
                                            "its decoding of the same samples join the two-sample test")
    parser.add_argument("--data", required=True)
    parser.add_argument("-n", type=int, default=500, help="number of samples")
    parser.add_argument("--features", default=str(DEFAULT_FEATURES), help="trained SliceCNN directory")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    add_guidance_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-steps", type=int, default=300, help="training steps of the two-sample test")
    parser.add_argument("--repeats", type=int, default=3, help="subject splits of the two-sample test")
    parser.add_argument("--bands", type=parse_sigmas, default=(),
                        help="comma-separated blur sigmas in pixels, e.g. 1,2: for each, the two-sample test also "
                             "judges every decoder's reconstructions below that blur plus the real slice's finer "
                             "detail, which says at which scale a decoder is given away")
    parser.add_argument("--pairs", type=int, default=500, help="random pairs for the MS-SSIM diversity")
    parser.add_argument("--limit", type=int, help="only the first N images of each split")
    parser.add_argument("--out", help="folder for report.json and samples.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    report = run_or_fail(evaluate, args)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"\n{args.n} samples (temperature {args.temperature}, top-k {args.top_k}, guidance {args.guidance}) vs validate")
        print(generation_table(report))
        if "realistic_precision" in report:
            print(f"the realistic decoder's detail head drew in {report['realistic_precision']} (the faster here, as the app draws it)")


if __name__ == "__main__":
    main()
