"""Training throughput of the VQ-VAE on this machine: fp32 vs bf16 autocast, contiguous vs
channels-last, and the model's FLOPs per image with the resulting fraction of the CPU's peak.

    python -m benchmarks.train_vqvae [--batch-size 16] [--steps 6] [--peak-fp32 150] [--peak-bf16 390] [--compile]

The peaks default to this project's CPU (AMD Zen 4, 2 cores): ~150 GFLOP/s fp32, ~390 bf16.
One training step = forward, MSE + SSIM + commitment loss, backward, Adam update, exactly as
the VQ-VAE trainer (vqvae/trainers.py, run as `python -m train.vqvae`) does it with its defaults.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vqvae.metrics import ssim_torch
from vqvae.model import VQVAE


def train_step(model, optimizer, x, bf16: bool, forward=None):
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        reconstruction, commit, _ = (model if forward is None else forward)(x)
    reconstruction = reconstruction.float()
    loss = F.mse_loss(reconstruction, x) + (1 - ssim_torch(reconstruction, x).mean()) + commit
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def flops_per_image(batch_size: int) -> int:
    model = VQVAE()
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.rand(batch_size, 1, 256, 256)
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, x, bf16=False)
    return counter.get_total_flops() // batch_size


def images_per_second(channels_last: bool, bf16: bool, batch_size: int, steps: int,
                      compiled: bool = False) -> tuple[float, float]:
    """-> (images/s at the median step, seconds of the first step: warm-up or compilation)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = VQVAE().to(memory_format=fmt).train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 1, 256, 256).to(memory_format=fmt)
    start = time.perf_counter()
    train_step(model, optimizer, x, bf16, forward)  # warm-up: codebook init, kernel choice, compilation
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, optimizer, x, bf16, forward)
        times.append(time.perf_counter() - start)
    times.sort()
    return batch_size / times[len(times) // 2], first  # median step


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_vqvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--peak-fp32", type=float, default=150.0, help="GFLOP/s")
    parser.add_argument("--peak-bf16", type=float, default=390.0, help="GFLOP/s")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd forward passes")
    args = parser.parse_args()
    flops = flops_per_image(args.batch_size)
    print(f"VQ-VAE (default config), training step FLOPs per image: {flops / 1e9:.2f} GFLOP "
          f"(forward + backward), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'precision':<10}{'layout':<15}{'compiled':<10}{'images/s':>9}{'GFLOP/s':>9}{'% of peak':>10}"
          f"{'1st step s':>11}")
    for compiled in (False, True) if args.compile else (False,):
        for bf16 in (False, True):
            for channels_last in (False, True):
                rate, first = images_per_second(channels_last, bf16, args.batch_size, args.steps, compiled)
                gflops = rate * flops / 1e9
                peak = args.peak_bf16 if bf16 else args.peak_fp32
                print(f"{'bf16' if bf16 else 'fp32':<10}{'channels-last' if channels_last else 'contiguous':<15}"
                      f"{'yes' if compiled else 'no':<10}{rate:>9.1f}{gflops:>9.1f}{100 * gflops / peak:>9.1f}%"
                      f"{first:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
