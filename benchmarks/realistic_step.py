"""What the discriminator and the detail head cost (the realistic decoder of ``train.realistic``):

- one training step of the detail head with and without its discriminator (the trainer's own
  ``realistic.realistic_step``), same batch, crop, precision and head;
- decoding one slice in the app: the faithful decoder, and the realistic one with its detail
  head in fp32 and in bf16 (the app draws in the faster: ``precision.choose_detail_precision``).

    python -m benchmarks.realistic_step [--batch-size 16] [--steps 5] [--realistic assets/models/vqvae-realistic]

Random slices and codes; the bundled faithful model plus an untrained head of the trainer's
default shape where no realistic decoder is given. Target (issue: realistic decoder): the step
with the discriminator at most 1.5x the plain one.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from benchmarks.train_vqvae import machine
from vqvae.generation import SliceCNN
from vqvae.hub import load_model
from vqvae.model import VQVAE
from vqvae.precision import autocast
from vqvae.realistic import RealisticTraining, build_realistic, realistic_step

MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of a call of ``fn`` over ``repeats``, after one warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def step_seconds(model: VQVAE, config: RealisticTraining, adversarial: bool, precision: str, steps: int) -> float:
    torch.manual_seed(0)
    head = copy.deepcopy(model.decoder.detail).requires_grad_(True).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, betas=(0.5, 0.9))
    discriminator = SliceCNN(num_classes=1, width=config.disc_width, input_pool=1).train() if adversarial else None
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.disc_lr) if adversarial else None
    real, base = (torch.rand(config.batch_size, 1, config.crop, config.crop) for _ in range(2))
    return median_seconds(lambda: realistic_step(head, optimizer, real, base, config,
                                                 lambda: autocast(precision, torch.device("cpu")),
                                                 discriminator, disc_optimizer), steps)


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.realistic_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=RealisticTraining.batch_size)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--vqvae", default=str(MODELS / "vqvae"), help="the faithful model")
    parser.add_argument("--realistic", help="a trained realistic decoder (default: an untrained head on --vqvae)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    config = RealisticTraining(data="unused", out="unused", init=args.vqvae, batch_size=args.batch_size, epochs=1)
    model = load_model(VQVAE, args.realistic) if args.realistic else build_realistic(config)
    head = model.decoder.detail
    print(f"detail head: {sum(p.numel() for p in head.parameters())} weights; training step: batch "
          f"{config.batch_size}, {config.crop}-pixel crops, median of {args.steps}")
    print(f"{'precision':<10}{'plain s':>9}{'+ discriminator s':>19}{'ratio':>7}{'target':>8}")
    for precision in ("fp32", "bf16"):
        plain = step_seconds(model, config, False, precision, args.steps)
        against = step_seconds(model, config, True, precision, args.steps)
        print(f"{precision:<10}{plain:>9.3f}{against:>19.3f}{against / plain:>7.2f}{'<= 1.5':>8}")
    faithful, model = load_model(VQVAE, args.vqvae).eval(), model.eval()
    codes = torch.randint(faithful.num_codes, (1, 32, 32))
    print(f"\ndecoding one 256x256 slice (median of {args.steps})")
    print(f"{'decoder':<34}{'ms':>8}")
    print(f"{'faithful':<34}{median_seconds(lambda: faithful.decode(codes), args.steps) * 1000:>8.0f}")
    for precision in ("fp32", "bf16"):
        head.precision = precision
        ms = median_seconds(lambda: model.decode(codes), args.steps) * 1000
        print(f"{'realistic, detail head in ' + precision:<34}{ms:>8.0f}")


if __name__ == "__main__":
    main()
