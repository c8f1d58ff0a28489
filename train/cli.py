"""What the command-line entry points share: run arguments, one-line errors, model loading."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vqvae.data import DataError
from vqvae.hub import from_pretrained
from train.loop import NonFiniteLoss, RunConfig


def fail(message: str):
    """Exit non-zero with a one-line reason (no stack trace)."""
    sys.exit(f"error: {message}")


def add_run_arguments(parser: argparse.ArgumentParser, lr: float, batch_size: int):
    """Arguments every trainer shares (see train/loop.py)."""
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--minutes", type=float, help="training-time budget")
    parser.add_argument("--epochs", type=float, help="epoch budget")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--eval-minutes", type=float, default=2.0,
                        help="evaluate and checkpoint every this much training time")
    parser.add_argument("--checkpoint-steps", type=int, default=0,
                        help="also checkpoint (without evaluating) every N steps; 0 = off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model's forward pass")
    parser.add_argument("--device", default="auto", help="auto (the GPU where there is one), cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true")


def run_config(args) -> RunConfig:
    """The shared run settings; also seeds torch, so call it before building the model."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return RunConfig(out=args.out, minutes=args.minutes, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, eval_minutes=args.eval_minutes,
                     checkpoint_steps=args.checkpoint_steps, device=args.device,
                     seed=args.seed, resume=args.resume, progress=not args.no_progress)


def run_or_fail(train_model, args):
    """Run a trainer; a problem the user can fix (bad data, bad settings, a diverged loss)
    ends it with a one-line reason instead of a traceback."""
    try:
        return train_model(args)
    except (DataError, ValueError, NonFiniteLoss) as error:
        fail(str(error))


def load_model(cls, path: str):
    """``cls.from_pretrained`` on a local model directory, with a one-line error on failure."""
    folder = Path(path)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        fail(f"{path} is not a model directory (needs config.json and model.safetensors)")
    try:
        return from_pretrained(cls, folder)
    except Exception as error:  # corrupt or mismatched weights
        fail(f"cannot load {cls.__name__} from {path}: {error}")


def start_from(model, path: str, new: str, hint: str = ""):
    """``--init``: load a trained model's weights into ``model``, of the same class. Only
    parameters whose names contain ``new`` may be missing from it (parts the trained model did
    not have; they keep their own start). Any other difference is a one-line error."""
    mine, theirs = model.state_dict(), load_model(type(model), path).state_dict()
    differ = [k for k in theirs if k not in mine or mine[k].shape != theirs[k].shape]
    differ += [k for k in mine if k not in theirs and new not in k]
    if differ:
        fail(f"--init {path}: that model's architecture differs from this one ({', '.join(differ[:3])}){hint}")
    model.load_state_dict(theirs, strict=False)
