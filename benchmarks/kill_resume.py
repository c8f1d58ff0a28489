"""The longer variant of the crash-safety test: SIGKILL the VQ-VAE trainer many times at random
moments, resume each time, and compare the final weights with an uninterrupted run, bit for bit.

    python benchmarks/kill_resume.py [--kills 20] [--epochs 20]

Runs on small synthetic slices (tests/conftest.py) with a tiny model, on the CPU, fixed seed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import write_split  # noqa: E402
from tests.test_robustness import kill_and_resume, same_weights, train_command  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    write_split(work / "data" / "keras_png_slices_train", [1, 2, 3], 4, rng)
    write_split(work / "data" / "keras_png_slices_validate", [402], 4, rng)
    epochs = ("--epochs", str(args.epochs))
    start = time.perf_counter()
    subprocess.run(train_command(work / "data", work / "whole", *epochs), check=True, cwd=ROOT, capture_output=True)
    whole = time.perf_counter() - start
    start = time.perf_counter()
    landed = kill_and_resume(work / "data", work / "killed", args.kills, extra=epochs)
    killed = time.perf_counter() - start
    print(f"{'run':<28}{'seconds':>9}{'SIGKILLs':>10}")
    print(f"{'uninterrupted':<28}{whole:>9.1f}{0:>10}")
    print(f"{'killed and resumed':<28}{killed:>9.1f}{landed:>10}")
    print(f"final weights bit-identical: {same_weights(work / 'whole', work / 'killed')}")


if __name__ == "__main__":
    main()
