"""Prior sampling speed: the cached sampler against the reference sampler, same prior, same run.

    python -m benchmarks.sample_prior [--prior DIR] [--counts 1 4 16] [--reference-budget 120]

Uses the prior in --prior (a model directory, or a weights directory holding prior/ such as
assets/models). Default: a randomly initialised prior with the bundled prior's configuration
(assets/models/prior/config.json; sampling cost does not depend on the weights). The reference
sampler re-runs the whole network for each of the 1024 positions, so its cost per position is
constant: when a count would take longer than --reference-budget seconds, it is timed over the
first rows and extrapolated, and the table says so.

Both samplers draw each code from the same random stream, so with the same seed they pick the
same codes wherever their logits agree. Each count checks that: the reference's codes against the
cached sampler's, over every row the reference finished (all rows, or the first R when it was
cut short). It also reports the largest difference between the cached sampler's logits and the
full network's on the cached codes (one teacher-forced forward pass gives what the reference
computes position by position, since logits at (i, j) depend only on codes before (i, j)),
over the whole grid.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from vqvae import sampling
from vqvae import hub
from vqvae.hub import is_model_dir, is_weights_dir
from vqvae.prior import GatedPixelCNN
from vqvae.sampling import sample_cached, sample_reference

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "models"  # the app's bundled weights
SEED = 0


class _Stop(Exception):
    pass


def time_reference(prior, n, budget: float):
    """-> (seconds for the full grid, measured or extrapolated; rows finished; their codes
    (n, rows, W))."""
    start = time.perf_counter()
    done = {"rows": 0, "codes": None}

    def progress(rows, codes):
        done["rows"], done["codes"] = rows, codes
        if time.perf_counter() - start > budget and rows < prior.grid_size:
            raise _Stop

    try:
        codes = sample_reference(prior, n, generator=torch.Generator().manual_seed(SEED), progress=progress)
    except _Stop:
        elapsed = time.perf_counter() - start
        rows = done["rows"]
        return elapsed * prior.grid_size / rows, rows, done["codes"][:, :rows].clone()
    return time.perf_counter() - start, prior.grid_size, codes


@contextlib.contextmanager
def _capture_picks(record):
    """Call ``record(logits)`` with each (B, K) logits array the cached sampler draws from, in
    raster order. Reaches into vqvae.sampling's private pick (the cached sampler exposes no logits);
    yields False, capturing nothing, if that is not there any more."""
    pick = getattr(sampling, "_gumbel_argmax", None)
    if pick is None:
        yield False
        return

    def recording(logits, *args, **kwargs):
        record(logits)
        return pick(logits, *args, **kwargs)

    sampling._gumbel_argmax = recording
    try:
        yield True
    finally:
        sampling._gumbel_argmax = pick


@torch.no_grad()
def largest_logit_difference(prior, n: int, cached: torch.Tensor) -> float | None:
    """max |cached sampler's logits - the full network's| over every position of the grid, or
    None if the cached sampler's logits cannot be captured. Untimed: one more cached run (same
    seed, so the same codes) and one forward pass."""
    full = prior(cached).permute(0, 2, 3, 1).reshape(n, -1, prior.num_codes).double().numpy()  # (B, H*W, K)
    largest, position = [0.0], [0]

    def record(logits):
        j = position[0]
        if j < full.shape[1]:
            largest[0] = max(largest[0], float(np.abs(np.asarray(logits, np.float64) - full[:, j]).max()))
        position[0] += 1

    with _capture_picks(record) as capturing:
        if not capturing:
            return None
        again = sample_cached(prior, n, generator=torch.Generator().manual_seed(SEED))
    if not torch.equal(again, cached) or position[0] != full.shape[1]:
        return None  # not the run that was compared: do not report a number
    return largest[0]


def compare(reference: torch.Tensor, cached: torch.Tensor, rows: int, grid: int) -> str:
    n, width = cached.shape[0], cached.shape[2]
    differ = (reference[:, :rows] != cached[:, :rows]).sum().item()
    where = "all" if rows == grid else "the first"
    if differ == 0:
        return f"identical codes in {where} {rows} rows of {n} samples"
    return f"CODES DIFFER: {differ} of {n * rows * width} codes in {where} {rows} rows of {n} samples"


def prior_to_time(source: str | None) -> tuple[torch.nn.Module, str]:
    if source:
        folder = Path(source)
        if is_weights_dir(folder) and not is_model_dir(folder):
            folder = folder / "prior"
        return hub.load_prior(folder), str(folder)
    config_file = BUNDLED / "prior" / "config.json"
    if config_file.is_file():
        return GatedPixelCNN(**json.loads(config_file.read_text())).eval(), "random init, bundled prior's config"
    return GatedPixelCNN().eval(), "random init, default config"


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sample_prior", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", help="prior model directory, or a weights directory holding prior/ "
                                        "(default: random init, the bundled prior's configuration)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--reference-budget", type=float, default=120.0,
                        help="seconds of reference sampling per count before extrapolating")
    parser.add_argument("--no-logits", action="store_true",
                        help="skip the (untimed) logit comparison, which costs one more cached run per count")
    args = parser.parse_args()
    torch.manual_seed(0)
    prior, described = prior_to_time(args.prior)
    params = sum(p.numel() for p in prior.parameters()) / 1e6
    print(f"prior: {described} ({params:.2f} M parameters, "
          f"{prior.grid_size}x{prior.grid_size} grid, {prior.num_codes} codes), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'samples':>8}{'cached s':>10}{'reference s':>13}{'speed-up':>10}{'max |dlogit|':>14}  notes")
    for n in args.counts:
        start = time.perf_counter()
        cached = sample_cached(prior, n, generator=torch.Generator().manual_seed(SEED))
        cached_seconds = time.perf_counter() - start
        reference_seconds, rows, reference = time_reference(prior, n, args.reference_budget)
        note = compare(reference, cached, rows, prior.grid_size)
        if rows < prior.grid_size:
            note += f"; reference extrapolated from {rows}/{prior.grid_size} rows"
        logits = None if args.no_logits else largest_logit_difference(prior, n, cached)
        shown = "n/a" if logits is None else f"{logits:.1e}"
        print(f"{n:>8}{cached_seconds:>10.2f}{reference_seconds:>13.1f}"
              f"{reference_seconds / cached_seconds:>9.0f}x{shown:>14}  {note}", flush=True)


if __name__ == "__main__":
    main()
