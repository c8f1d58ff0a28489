"""Train the feature network of the generation metrics: a SliceCNN predicting slice position k.

    python -m train.position_net --data ../shared/oasis --out runs/position_net --minutes 5

Validation reports exact accuracy over the 32 positions and accuracy within one position
(neighbouring slices look alike). The model lands in RUN_DIR/model; the shipped copy is
assets/models/position_net, which ``train.evaluate_generation`` uses by default.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from vqvae.data import load_split
from train.cli import add_run_arguments, run_config, run_or_fail
from train.generation import SliceCNN, batched
from train.loop import TrainingRun, parallel


def position_accuracy(model: SliceCNN, images: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
    model.eval()
    predicted = batched(model, images, device=next(model.parameters()).device).argmax(1)
    error = (predicted - positions).abs()
    return {"accuracy": float((error == 0).float().mean()),
            "within_one": float((error <= 1).float().mean())}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    add_run_arguments(parser, lr=2e-3, batch_size=32)
    parser.add_argument("--limit", type=int, help="read only the first N images of each split")
    return parser.parse_args(argv)


def main(argv=None):
    run_or_fail(train_model, parse_args(argv))


def train_model(args):
    config = run_config(args)
    train, validate = (load_split(args.data, split, limit=args.limit, progress=not args.no_progress)
                       for split in ("train", "validate"))
    if (train.positions < 0).any() or (validate.positions < 0).any():
        raise ValueError("slice positions come from OASIS file names (case_<subject>_slice_<k>); "
                         "some files here do not have them")
    model = SliceCNN(num_classes=int(train.positions.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    run = TrainingRun(config, model, optimizer, len(train), extra_config=vars(args))
    forward = parallel(model, args.compile)

    def evaluate():
        return position_accuracy(model, validate.images, validate.positions)

    model.train()
    while not run.finished():
        index = run.next_batch()
        run.apply_learning_rate()
        loss = F.cross_entropy(forward(train.images[index].to(run.device)), train.positions[index].to(run.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step_done({"loss": loss.item()}, evaluate)
    final = run.finish(evaluate, save_dir=run.out / "model")
    if run.is_main:
        print("final (validate): " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))


if __name__ == "__main__":
    main()
