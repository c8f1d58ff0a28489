"""Prior sampling speed: the cached sampler against the reference sampler, same prior, same run.

    python benchmarks/sample_prior.py [--prior DIR] [--counts 1 4 16] [--reference-budget 120]

Uses the prior in --prior (default: a randomly initialised prior of the shipped size; sampling
cost does not depend on the weights). The reference sampler re-runs the whole network for each
of the 1024 positions, so its cost per position is constant: when a count would take longer than
--reference-budget seconds, it is timed over the first rows and extrapolated, and the table
says so. Both samplers are also checked to produce identical code grids where both ran fully.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vqvae.hub import from_pretrained  # noqa: E402
from vqvae.prior import GatedPixelCNN  # noqa: E402
from vqvae.sampling import sample_cached, sample_reference  # noqa: E402


class _Stop(Exception):
    pass


def time_reference(prior, n, budget: float):
    """-> (seconds for the full grid, rows actually run, codes or None if extrapolated)."""
    start = time.perf_counter()
    rows_done = [0]

    def progress(rows, _codes):
        rows_done[0] = rows
        if time.perf_counter() - start > budget and rows < prior.grid_size:
            raise _Stop

    try:
        codes = sample_reference(prior, n, generator=torch.Generator().manual_seed(0), progress=progress)
    except _Stop:
        elapsed = time.perf_counter() - start
        return elapsed * prior.grid_size / rows_done[0], rows_done[0], None
    return time.perf_counter() - start, prior.grid_size, codes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", help="prior model directory (default: random, shipped size)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--reference-budget", type=float, default=120.0,
                        help="seconds of reference sampling per count before extrapolating")
    args = parser.parse_args()
    torch.manual_seed(0)
    prior = from_pretrained(GatedPixelCNN, args.prior) if args.prior else GatedPixelCNN().eval()
    params = sum(p.numel() for p in prior.parameters()) / 1e6
    print(f"prior: {args.prior or 'random init, default config'} ({params:.2f} M parameters, "
          f"{prior.grid_size}x{prior.grid_size} grid, {prior.num_codes} codes), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'samples':>8}{'cached s':>10}{'reference s':>13}{'speed-up':>10}  notes")
    for n in args.counts:
        start = time.perf_counter()
        cached = sample_cached(prior, n, generator=torch.Generator().manual_seed(0))
        cached_seconds = time.perf_counter() - start
        reference_seconds, rows, reference = time_reference(prior, n, args.reference_budget)
        if reference is None:
            note = f"reference extrapolated from {rows}/{prior.grid_size} rows"
        else:
            note = "identical codes" if torch.equal(reference, cached) else "CODES DIFFER"
        print(f"{n:>8}{cached_seconds:>10.2f}{reference_seconds:>13.1f}"
              f"{reference_seconds / cached_seconds:>9.0f}x  {note}")


if __name__ == "__main__":
    main()
