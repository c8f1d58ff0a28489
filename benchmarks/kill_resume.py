"""The longer variant of the crash-safety test: SIGKILL the VQ-VAE trainer many times at random
moments, resume each time, and compare the final weights with an uninterrupted run, bit for bit.

    python -m benchmarks.kill_resume [--kills 20] [--epochs 20]

Runs on small synthetic slices (vqvae/testing.py) with a tiny model, on the CPU, fixed seed.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from vqvae.testing import kill_and_resume, same_weights, train_command, write_split

ROOT = Path(__file__).resolve().parents[1]  # the repository root: the trainer runs as `python -m train.vqvae`


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kill_resume", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    write_split(work / "data" / "keras_png_slices_train", [1, 2, 3], 4, rng)
    write_split(work / "data" / "keras_png_slices_validate", [402], 4, rng)
    start = time.perf_counter()
    subprocess.run(train_command(work / "data", work / "whole", epochs=args.epochs), check=True, cwd=ROOT,
                   capture_output=True)
    whole = time.perf_counter() - start
    start = time.perf_counter()
    landed = kill_and_resume(work / "data", work / "killed", args.kills, ROOT, epochs=args.epochs)
    killed = time.perf_counter() - start
    print(f"{'run':<28}{'seconds':>9}{'SIGKILLs':>10}")
    print(f"{'uninterrupted':<28}{whole:>9.1f}{0:>10}")
    print(f"{'killed and resumed':<28}{killed:>9.1f}{landed:>10}")
    print(f"final weights bit-identical: {same_weights(work / 'whole', work / 'killed')}")


if __name__ == "__main__":
    main()
