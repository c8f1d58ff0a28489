"""Training throughput of the VQ-VAE on this machine: fp32 vs bf16 autocast, contiguous vs
channels-last, and the model's FLOPs per image with the resulting fraction of the machine's peak.

    python -m benchmarks.train_vqvae [--batch-size 16] [--steps 6] [--compile]

It first says what it runs on (CPU model, cores, the ISA flags that matter for fp32 and bf16
kernels) and measures the peak instead of assuming one: the best of a few large matrix products
(4096 x 4096, fp32 and bf16), the fastest work this torch build does on this machine. Machines of
one kind differ (bf16 was 20x slower than fp32 on one, faster on another), which is why the
trainers choose their precision at run time (--precision auto).
One training step = forward, MSE + SSIM + commitment loss, backward, Adam update, exactly as
the VQ-VAE trainer (vqvae/trainers.py, run as `python -m train.vqvae`) does it with its defaults.
"""
from __future__ import annotations

import argparse
import os
import platform
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


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve", "bf16")


def machine() -> str:
    """CPU model, cores, and the ISA flags that decide which kernels torch can use."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and model in ("", platform.machine()):
                model = value.strip()
            if key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    present = [f for f in ISA_FLAGS if f in flags]
    return (f"{model}; {os.cpu_count()} logical cores, torch using {torch.get_num_threads()} threads; "
            f"ISA: {', '.join(present) or 'none of ' + ', '.join(ISA_FLAGS)}; torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def measured_peak(dtype: torch.dtype, size: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of the best of ``repeats`` size x size matrix products in ``dtype``."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up: kernel choice, memory
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


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
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd forward passes")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    peaks = {False: measured_peak(torch.float32), True: measured_peak(torch.bfloat16)}
    print(f"measured peak (4096^3 matmul): fp32 {peaks[False]:.0f} GFLOP/s, bf16 {peaks[True]:.0f} GFLOP/s")
    flops = flops_per_image(args.batch_size)
    print(f"VQ-VAE (default config), training step FLOPs per image: {flops / 1e9:.2f} GFLOP "
          f"(forward + backward), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'precision':<10}{'layout':<15}{'compiled':<10}{'images/s':>9}{'GFLOP/s':>9}{'% of measured peak':>19}"
          f"{'1st step s':>11}")
    for compiled in (False, True) if args.compile else (False,):
        for bf16 in (False, True):
            for channels_last in (False, True):
                rate, first = images_per_second(channels_last, bf16, args.batch_size, args.steps, compiled)
                gflops = rate * flops / 1e9
                peak = peaks[bf16]
                print(f"{'bf16' if bf16 else 'fp32':<10}{'channels-last' if channels_last else 'contiguous':<15}"
                      f"{'yes' if compiled else 'no':<10}{rate:>9.1f}{gflops:>9.1f}{100 * gflops / peak:>18.1f}%"
                      f"{first:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
