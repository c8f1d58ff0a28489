"""Sample new brain slices: draw code grids from the prior, decode them with the VQ-VAE.

    python -m train.sample --vqvae runs/vqvae/model --prior runs/prior/model -n 16 --out samples \\
        [--slice K [K ...]] [--temperature T] [--top-k N] [--guidance G] [--seed S] [--sampler cached|reference] \\
        [--also-decoder assets/models/vqvae-realistic]

Writes sample_000.png ... and grid.png to OUT: a near-square mosaic, or with several --slice
positions, one row of n samples per position (top to bottom in the order given). With
--also-decoder (another decoder on the same codes, e.g. the realistic one) also decoders.png:
the same samples decoded by --vqvae (top row) and by it (bottom row).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqvae.hub import load_model, load_prior, load_realistic
from vqvae.images import mosaic, to_uint8
from vqvae.model import VQVAE
from vqvae.sampling import SAMPLERS, sample_codes
from train.cli import add_guidance_argument, run_or_fail


def sample(args):
    vqvae, prior = load_model(VQVAE, args.vqvae), load_prior(args.prior)
    if vqvae.num_codes != prior.num_codes:
        raise ValueError(f"the prior models {prior.num_codes} codes but the VQ-VAE has {vqvae.num_codes}")
    if args.slice is not None and not all(0 <= k < prior.num_positions for k in args.slice):
        raise ValueError(f"--slice must be in 0..{prior.num_positions - 1}")
    if args.n < 1 or args.temperature < 0:
        raise ValueError("-n must be >= 1 and --temperature >= 0")
    start = time.perf_counter()
    slices = args.slice or [None]
    positions = None if args.slice is None else torch.tensor(slices).repeat_interleave(args.n)
    codes = sample_codes(prior, args.n * len(slices), positions, args.temperature, args.top_k, args.seed,
                         args.sampler, guidance=args.guidance)
    pixels = to_uint8(vqvae.decode(codes)[:, 0])  # (N, H, W)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(pixels):
        Image.fromarray(image).save(out / f"sample_{k:03d}.png")
    Image.fromarray(mosaic(pixels, columns=args.n if len(slices) > 1 else None)).save(out / "grid.png")
    print(f"wrote {len(pixels)} samples and grid.png to {out} ({seconds:.1f} s, {args.sampler} sampler)")
    if args.also_decoder:
        other = load_realistic(vqvae, args.also_decoder)  # drawn as the app draws it
        both = np.concatenate([pixels, to_uint8(other.decode(codes)[:, 0])])
        Image.fromarray(mosaic(both, columns=len(pixels))).save(out / "decoders.png")
        print(f"wrote decoders.png: top row {args.vqvae}, bottom row {args.also_decoder}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--prior", required=True)
    parser.add_argument("-n", type=int, default=16, help="number of samples")
    parser.add_argument("--out", required=True)
    parser.add_argument("--slice", type=int, nargs="+", help="slice position(s) k (default: unconditional)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    add_guidance_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="cached")
    parser.add_argument("--also-decoder", help="another decoder on the same codes: writes decoders.png, "
                                               "the samples decoded both ways")
    run_or_fail(sample, parser.parse_args(argv))


if __name__ == "__main__":
    main()
