"""Train the VQ-VAE on brain slices.

    python -m train.vqvae --data ../shared/oasis --out runs/vqvae --minutes 30

Fine-tuning only the decoder of a trained model (its encoder and codebook, so its codes and any
prior trained on them, stay exactly as they were), optionally with refinement blocks:

    python -m train.vqvae --data ../shared/oasis --out runs/decoder --init runs/vqvae/model \
        --decoder-only --refine-blocks 2 --minutes 30

Writes RUN_DIR/metrics.jsonl, RUN_DIR/checkpoint.pt (resumable with --resume) and the final
model in the Hugging Face layout under RUN_DIR/model.
"""
from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from vqvae.data import load_split
from vqvae.metrics import evaluate_reconstructions, ssim_torch
from vqvae.model import VQVAE
from train.cli import add_run_arguments, fail, load_model, run_config, run_or_fail, start_from
from train.loop import TrainingRun, parallel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="OASIS root or folder with train/validate splits")
    add_run_arguments(parser, lr=2e-3, batch_size=16)
    parser.add_argument("--downsample", type=int, default=8, choices=(4, 8, 16))
    parser.add_argument("--codes", type=int, default=512, help="codebook size K")
    parser.add_argument("--code-dim", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--hidden-channels", type=int, default=64)
    parser.add_argument("--res-blocks", type=int, default=2)
    parser.add_argument("--refine-blocks", type=int, default=0,
                        help="residual blocks after each inner upsampling stage of the decoder")
    parser.add_argument("--init", help="start from this trained VQ-VAE (its architecture; refinement "
                                       "blocks it lacks start as the identity)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="train only the decoder; needs --init (encoder and codebook stay frozen)")
    parser.add_argument("--pixel-loss", choices=("mse", "l1"), default="mse")
    parser.add_argument("--ssim-weight", type=float, default=1.0,
                        help="loss = pixel loss + w * (1 - SSIM) + commitment (Zhao et al. 2017)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (quantiser stays fp32)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--eval-images", type=int, default=256,
                        help="validate images used by the periodic evaluation (0 = all)")
    parser.add_argument("--limit", type=int, help="read only the first N images of each split")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable or wrongly sized images (with a warning and a count)")
    return parser.parse_args(argv)


def build_model(args) -> VQVAE:
    if args.decoder_only and not args.init:
        fail("--decoder-only needs --init: the codes come from a trained encoder")
    if not args.init:
        return VQVAE(downsample=args.downsample, num_codes=args.codes, code_dim=args.code_dim,
                     base_channels=args.base_channels, hidden_channels=args.hidden_channels,
                     res_blocks=args.res_blocks, refine_blocks=args.refine_blocks)
    load_model(VQVAE, args.init)  # a readable model, or a one-line error
    config = json.loads((Path(args.init) / "config.json").read_text())  # its architecture
    return VQVAE(**{**config, "refine_blocks": max(args.refine_blocks, config.get("refine_blocks", 0))})


def main(argv=None):
    run_or_fail(train_model, parse_args(argv))


def train_model(args):
    config = run_config(args)
    train, validate = (load_split(args.data, split, limit=args.limit, progress=not args.no_progress,
                                  skip_bad=args.skip_bad) for split in ("train", "validate"))

    model = build_model(args)
    memory_format = torch.contiguous_format if args.no_channels_last else torch.channels_last
    model = model.to(memory_format=memory_format)
    if args.decoder_only:
        model.encoder.requires_grad_(False)
        model.quantizer.requires_grad_(False)
    trained = model.decoder if args.decoder_only else model
    optimizer = torch.optim.Adam(trained.parameters(), lr=args.lr)
    run = TrainingRun(config, model, optimizer, len(train), extra_config=vars(args))
    if args.init and run.step == 0:  # not when resuming: the checkpoint already has it
        start_from(model, args.init, new=".refine.")
    # after TrainingRun: a resumed model is loaded before DDP copies it
    forward = parallel(trained, args.compile)
    autocast = (lambda: torch.autocast(run.device.type, dtype=torch.bfloat16)) if args.bf16 else nullcontext

    # A fixed, evenly spread subset keeps periodic evaluation cheap and comparable over time.
    n_eval = len(validate) if args.eval_images <= 0 else min(args.eval_images, len(validate))
    eval_images = validate.images[torch.linspace(0, len(validate) - 1, n_eval).long()]

    def evaluate():
        metrics = evaluate_reconstructions(model, eval_images)
        return {k: metrics[k] for k in ("ssim", "ssim_brain", "psnr", "usage", "perplexity")}

    model.train()
    while not run.finished():
        x = train.batch(run.next_batch()).to(run.device, memory_format=memory_format, non_blocking=True)
        run.apply_learning_rate()
        with autocast():
            if args.decoder_only:  # the frozen encoder's codes, exactly as a prior sees them
                codes = model.encode(x)
                reconstruction, commit_loss = forward(model.quantizer.lookup(codes)), 0.0
            else:
                reconstruction, commit_loss, codes = forward(x)
        reconstruction = reconstruction.float()
        pixel = (F.l1_loss if args.pixel_loss == "l1" else F.mse_loss)(reconstruction, x)
        loss = pixel + commit_loss
        if args.ssim_weight:
            ssim = ssim_torch(reconstruction, x).mean()
            loss = loss + args.ssim_weight * (1 - ssim)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        used = torch.unique(codes).numel() / model.num_codes
        run.step_done({"loss": loss.item(), "batch_usage": used}, evaluate)
    final = run.finish(evaluate, save_dir=run.out / "model")
    if final:
        print("final (validate subset): " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))


if __name__ == "__main__":
    main()
