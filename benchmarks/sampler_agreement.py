"""Does the cached sampler pick exactly the reference sampler's codes on the shipped prior?

    python -m benchmarks.sampler_agreement [--prior DIR] [--seeds 200] [--temperature 1.0] [--top-k 0] [--guidance 1.0]

For each seed, one sample from the cached sampler (slice position seed % 32), then every one of
its 1024 codes checked against the reference sampler's pick by teacher forcing
(``vqvae.sampling.teacher_forced_picks``: one forward pass, the same random stream), which equals
running the reference sampler with that seed. Prints how many seeds agree on every code and the
smallest gap between the winning and the runner-up perturbed score (how far the closest pick was
from flipping; the samplers' float32 logits differ by ~1e-5). With --guidance both sides use
classifier-free guidance towards the slice position (the cached sampler on a doubled batch,
teacher forcing by one pass over both halves).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vqvae.hub import load_prior
from vqvae.sampling import sample_cached, teacher_forced_picks

BUNDLED_PRIOR = Path(__file__).resolve().parents[1] / "assets" / "models" / "prior"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampler_agreement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default=str(BUNDLED_PRIOR))
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=1.0)
    args = parser.parse_args(argv)
    prior = load_prior(args.prior)
    top_k = args.top_k or None
    agree, codes_differing, smallest = 0, 0, float("inf")
    for seed in range(args.seeds):
        position = torch.tensor([seed % prior.num_positions])
        codes = sample_cached(prior, 1, positions=position, temperature=args.temperature, top_k=top_k,
                              generator=torch.Generator().manual_seed(seed), guidance=args.guidance)
        picks, margin = teacher_forced_picks(prior, codes, position, args.temperature, top_k, seed,
                                             guidance=args.guidance)
        differing = int((picks != codes).sum())
        agree += differing == 0
        codes_differing += differing
        smallest = min(smallest, float(margin.min()))
    print("| prior | seeds | identical code grids | codes differing | smallest winning margin |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {args.prior} (T={args.temperature}, top-k {args.top_k}, guidance {args.guidance:g}) | {args.seeds} | {agree}/{args.seeds} | "
          f"{codes_differing} of {args.seeds * prior.grid_size ** 2} | {smallest:.2e} |")


if __name__ == "__main__":
    main()
