"""What the discriminator costs: one decoder-only training step of the realistic decoder with and
without its adversary (the patch discriminator's generator terms, VQGAN's adaptive weight, and
the discriminator's own update), same batch size, same precision, same model.

    python -m benchmarks.adversarial_step [--batch-size 8] [--steps 5] [--vqvae assets/models/vqvae]

The steps are the trainer's own (vqvae/trainers.py: vqvae_loss, Adversary), on random slices.
Target (issue: realistic decoder): the step with the discriminator at most 1.5x the plain one.
"""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch

from benchmarks.realistic_step import median_seconds
from benchmarks.train_vqvae import machine
from vqvae.adversarial import Adversary, PatchDiscriminator
from vqvae.trainers import VQVAETraining, build_vqvae, last_decoder_layer, vqvae_loss

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "models" / "vqvae"


def step_seconds(config: VQVAETraining, adversarial: bool, precision: str, steps: int) -> float:
    """Median seconds of one decoder-only step (after a warm-up step)."""
    torch.manual_seed(0)
    model = build_vqvae(config).to(memory_format=torch.channels_last).train()
    model.encoder.requires_grad_(False)
    model.quantizer.requires_grad_(False)
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=config.lr)
    adversary = None
    if adversarial:
        discriminator = PatchDiscriminator(config.disc_channels, config.disc_layers, norm=config.disc_norm)
        adversary = Adversary(discriminator, torch.optim.Adam(discriminator.parameters(), lr=config.disc_lr),
                              last_decoder_layer(model), config.disc_weight, config.adaptive_max,
                              config.feature_matching, config.disc_crop)
    x = torch.rand(config.batch_size, 1, 256, 256).to(memory_format=torch.channels_last)

    def context():
        return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step():
        loss, _, reconstruction = vqvae_loss(model, model.decoder, x, config, context())
        if adversary is not None:
            loss, _ = adversary.generator_loss(loss, reconstruction, x, context())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if adversary is not None:
            adversary.discriminator_step(x, reconstruction.detach(), context())

    return median_seconds(step, steps)


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adversarial_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--vqvae", default=str(BUNDLED), help="the faithful model the realistic decoder starts from")
    parser.add_argument("--texture-channels", type=int, default=16)
    parser.add_argument("--disc-crop", type=int, default=VQVAETraining.disc_crop,
                        help="the discriminator's crop (0 = whole slice), as train.vqvae's --disc-crop")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    config = VQVAETraining(data="unused", out="unused", init=args.vqvae, decoder_only=True, adversarial=True,
                           texture_channels=args.texture_channels, batch_size=args.batch_size, epochs=1,
                           disc_crop=args.disc_crop)
    print(f"decoder-only step of {Path(args.vqvae).name} + texture head ({args.texture_channels} channels), "
          f"batch {args.batch_size}, discriminator crop {args.disc_crop or 'none'}, median of {args.steps}")
    print(f"{'precision':<10}{'plain s':>9}{'+ discriminator s':>19}{'ratio':>7}{'target':>8}")
    for precision in ("fp32", "bf16"):
        plain = step_seconds(config, False, precision, args.steps)
        against = step_seconds(config, True, precision, args.steps)
        print(f"{precision:<10}{plain:>9.2f}{against:>19.2f}{against / plain:>7.2f}{'<= 1.5':>8}")


if __name__ == "__main__":
    main()
