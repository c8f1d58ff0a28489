"""Our VQ-VAE against MONAI's ``VQVAE`` on OASIS: same data, same loss, same optimiser and
schedule, same training-time budget, trained in alternating slices so both see the same machine.

    pip install monai==1.5.1   # benchmark-only; not in requirements.txt
    python -m benchmarks.vs_monai --data ../shared/oasis --minutes 10

Both models: f=8 (a 32x32 grid), K=512 codes of dimension 64, EMA codebook (decay 0.99),
channels-last, loss = MSE + (1 - SSIM) + commitment, Adam at 2e-3 with warm-up + cosine over the
budget (vqvae/training.py), batch 16. MONAI's is channels (16, 32, 64) with one residual layer per
level, the nearest parameter count to ours. Prints time-to-SSIM (128 validate slices after each
slice of training) and a final table on the whole validate split (scikit-image SSIM).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from vqvae.data import load_split
from vqvae.metrics import evaluate_reconstructions, ssim_torch
from vqvae.model import VQVAE
from vqvae.training import RunConfig, TrainingRun


class MonaiVQVAE(nn.Module):
    """MONAI's VQVAE behind our model's training and evaluation interface."""

    def __init__(self, num_codes: int = 512):
        super().__init__()
        from monai.networks.nets import VQVAE as MonaiModel
        self.num_codes = num_codes
        self.net = MonaiModel(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64),
                              num_res_channels=(16, 32, 64), num_res_layers=1,
                              downsample_parameters=((2, 4, 1, 1),) * 3,
                              upsample_parameters=((2, 4, 1, 1, 0),) * 3,
                              num_embeddings=num_codes, embedding_dim=64, decay=0.99)

    def forward(self, x):
        reconstruction, quantisation_loss = self.net(x)
        return reconstruction, quantisation_loss, None

    @torch.no_grad()
    def reconstruct(self, x):
        codes = self.net.index_quantize(x)
        return self.net.decode_samples(codes).clamp(0, 1), codes


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_monai", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget of each model")
    parser.add_argument("--slice-minutes", type=float, default=1.0, help="alternate every this much")
    parser.add_argument("--out", default="runs/vs_monai")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    train = load_split(args.data, "train", limit=args.limit)
    validate = load_split(args.data, "validate", limit=args.limit)
    curve_images = validate.images[torch.linspace(0, len(validate) - 1, min(128, len(validate))).long()]

    contenders = {}
    for name, build in (("brainvq", VQVAE), ("monai", MonaiVQVAE)):
        torch.manual_seed(0)
        model = build().to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        config = RunConfig(out=f"{args.out}/{name}", minutes=args.minutes, batch_size=16, lr=2e-3,
                           eval_minutes=1e9, progress=False)
        contenders[name] = (model, optimizer, TrainingRun(config, model, optimizer, len(train)))
    curves = {name: [] for name in contenders}

    while any(not run.finished() for _, _, run in contenders.values()):
        for name, (model, optimizer, run) in contenders.items():
            model.train()
            stop_at = run.train_seconds + 60 * args.slice_minutes
            while not run.finished() and run.train_seconds < stop_at:
                x = train.batch(run.next_batch()).to(run.device, memory_format=torch.channels_last)
                run.apply_learning_rate()
                reconstruction, commit, _ = model(x)
                loss = F.mse_loss(reconstruction, x) + (1 - ssim_torch(reconstruction, x).mean()) + commit
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                run.step_done({"loss": loss.item()})
            ssim = evaluate_reconstructions(model, curve_images)["ssim"]
            curves[name].append((run.train_seconds / 60, ssim))
            print(f"{name:>8}: {run.train_seconds / 60:5.1f} min, step {run.step:5d}, SSIM(128) {ssim:.4f}",
                  flush=True)

    print(f"\nvalidate ({len(validate)} slices), {args.minutes:g} training minutes each, alternating "
          f"every {args.slice_minutes:g} min, {torch.get_num_threads()} threads")
    print("| model | parameters | steps | images/s | SSIM | in-brain SSIM | PSNR | usage |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rates = {}
    for name, (model, _, run) in contenders.items():
        metrics = evaluate_reconstructions(model, validate.images)
        rates[name] = run.step * run.global_batch / run.train_seconds
        print(f"| {name} | {parameters(model):,} | {run.step} | {rates[name]:.1f} | {metrics['ssim']:.4f} | "
              f"{metrics['ssim_brain']:.4f} | {metrics['psnr']:.2f} | {metrics['usage']:.1%} |")
    print(f"\nthroughput ratio brainvq / monai: {rates['brainvq'] / rates['monai']:.2f}x")


if __name__ == "__main__":
    main()
