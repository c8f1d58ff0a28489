"""Train the gated PixelCNN prior on the code grids of a trained VQ-VAE.

    python -m train.prior --vqvae runs/vqvae/model --data ../shared/oasis --out runs/prior --minutes 20

The splits are encoded once into RUN_DIR/codes_<split>.npz (reused on --resume). Validation
reports the negative log-likelihood in bits per code beside two baselines on the same split:
uniform (log2 K) and the entropy of the split's own code frequencies (unigram).
"""
from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from vqvae.hub import FREQUENCIES
from vqvae.model import VQVAE
from vqvae.prior import GatedPixelCNN
from train.cli import add_run_arguments, load_model, run_config, run_or_fail, start_from
from train.codes import codes_path, extract, load_codes
from train.loop import TrainingRun, distributed_setup, parallel


def unigram_bits(codes: torch.Tensor, num_codes: int) -> float:
    """Entropy in bits of the codes' own frequencies."""
    p = torch.bincount(codes.flatten(), minlength=num_codes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def nll_bits(prior: GatedPixelCNN, codes: torch.Tensor, positions: torch.Tensor | None,
             batch_size: int = 64) -> float:
    """Mean negative log-likelihood in bits per code."""
    prior.eval()
    total = 0.0
    for i in range(0, len(codes), batch_size):
        device = prior.embedding.weight.device
        batch = codes[i:i + batch_size].to(device)
        pos = None if positions is None else positions[i:i + batch_size].to(device)
        total += prior.loss(batch, pos).item() * len(batch)
    return total / len(codes) / math.log(2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True, help="trained VQ-VAE model directory")
    parser.add_argument("--data", required=True)
    add_run_arguments(parser, lr=2e-3, batch_size=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--coordinates", type=int, default=32,
                        help="channels of the learned location map the gates see (0 = none; see vqvae/prior.py)")
    parser.add_argument("--init", help="start from this trained prior's weights (same channels, layers and "
                                       "kernel); a location map it lacks starts at zero")
    parser.add_argument("--drop-position", type=float, default=0.1,
                        help="train this fraction without the slice position, for unconditional sampling")
    parser.add_argument("--limit", type=int, help="read only the first N images of each split")
    return parser.parse_args(argv)


def main(argv=None):
    run_or_fail(train_model, parse_args(argv))


def train_model(args):
    config = run_config(args)
    vqvae = load_model(VQVAE, args.vqvae)
    rank, world = distributed_setup()
    for split in ("train", "validate"):
        if rank == 0 and not (config.resume and codes_path(args.out, split).exists()):
            extract(vqvae, args.data, split, args.out, limit=args.limit, progress=config.progress)
    if world > 1:
        torch.distributed.barrier()  # the other ranks read the codes rank 0 wrote
    train, validate = (load_codes(codes_path(args.out, s)) for s in ("train", "validate"))
    grid = train["codes"].shape[-1]
    prior = GatedPixelCNN(num_codes=vqvae.num_codes, channels=args.channels, layers=args.layers,
                          kernel=args.kernel, grid_size=grid, coordinates=args.coordinates)
    optimizer = torch.optim.Adam(prior.parameters(), lr=args.lr)
    run = TrainingRun(config, prior, optimizer, len(train["codes"]), extra_config=vars(args))
    if args.init and run.step == 0:  # not when resuming: the checkpoint already has it
        start_from(prior, args.init, new="coordinate", hint="; give the same --channels, --layers and --kernel")
    forward = parallel(prior, args.compile)
    baselines = {"uniform_bits": math.log2(vqvae.num_codes),
                 "unigram_bits": unigram_bits(validate["codes"], vqvae.num_codes)}

    def evaluate():
        return {"nll_bits": nll_bits(prior, validate["codes"], validate["positions"]),
                "nll_bits_no_position": nll_bits(prior, validate["codes"], None), **baselines}

    prior.train()
    while not run.finished():
        index = run.next_batch()
        codes, positions = train["codes"][index], train["positions"][index].clone()
        positions[torch.rand(len(index)) < args.drop_position] = -1
        codes, positions = codes.to(run.device), positions.to(run.device)
        run.apply_learning_rate()
        loss = F.cross_entropy(forward(codes, positions), codes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step_done({"bits": loss.item() / math.log(2)}, evaluate)
    final = run.finish(evaluate, save_dir=run.out / "model")
    if run.is_main:
        # The app's histogram compares a slice's codes with how often training used them.
        counts = torch.bincount(train["codes"].flatten(), minlength=vqvae.num_codes)
        (run.out / "model" / FREQUENCIES).write_text(json.dumps(counts.tolist()))
        print("final (validate): " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))


if __name__ == "__main__":
    main()
