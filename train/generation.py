"""Generation metrics: how close decoded prior samples come to real slices, each beside the
value the same measure gives for real slices against real slices.

- Fréchet distance between Gaussians fitted to features of ``SliceCNN``, a small CNN trained
  on OASIS train to predict the slice position k (the domain's stand-in for the ImageNet
  network of FID, Heusel et al. 2017); reference: train vs validate.
- Diversity: mean MS-SSIM of random pairs (lower = more varied); reference: validate pairs.
- Memorisation: each image's SSIM to its nearest training slice; a sample above the 99th
  percentile of validate's nearest-train SSIM is a suspected copy.
- Classifier two-sample test (Lopez-Paz and Oquab 2017): a fresh ``SliceCNN`` learns to tell
  two sets apart on half of each, and is scored on the other half. 0.5 = indistinguishable.

Images are uint8 tensors (N, 1, 256, 256), as ``vqvae.data`` loads them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from scipy import linalg
from torch import nn

from vqvae.metrics import ms_ssim_torch, ssim_torch


class SliceCNN(nn.Module, PyTorchModelHubMixin, library_name="brainvq", license="mit",
               tags=["brain-mri", "oasis", "evaluation"]):
    """Four stride-2 convolutions (with batch norm: without it this net sat at chance for
    thousands of steps) on the slice at half resolution, a 4x4 spatial summary, one hidden
    layer (the features), and ``num_classes`` logits."""

    def __init__(self, num_classes: int = 32, width: int = 32, feature_dim: int = 128):
        super().__init__()
        widths = [1, width // 2, width, 2 * width, 2 * width]
        layers = []
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(16 * widths[-1], feature_dim), nn.ReLU())
        self.out = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1, 256, 256) -> float (B, 1, 128, 128), shifted and scaled to roughly zero
        mean and unit spread on OASIS slices (mean ~0.17, std ~0.25 of full scale)."""
        return (F.avg_pool2d(images.float() / 255.0, 2) - 0.17) / 0.25

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.convs(self.prepare(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(images))


def batched(fn, images: torch.Tensor, batch_size: int = 128, device: torch.device | str = "cpu") -> torch.Tensor:
    """fn over images in batches (moved to ``device``), the results concatenated on the CPU."""
    with torch.no_grad():
        return torch.cat([fn(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # near-singular product: regularise as FID's reference code does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def random_pairs(n: int, pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` random index pairs (i, j) with i != j."""
    first = torch.randint(n, (pairs,), generator=generator)
    second = (first + torch.randint(1, n, (pairs,), generator=generator)) % n
    return first, second


def mean_pair_ms_ssim(images: torch.Tensor, pairs: int = 500, seed: int = 0) -> float:
    """Mean MS-SSIM between random pairs of distinct images: lower means more diverse."""
    i, j = random_pairs(len(images), pairs, torch.Generator().manual_seed(seed))
    scores = [ms_ssim_torch(images[i[k:k + 64]].float() / 255, images[j[k:k + 64]].float() / 255)
              for k in range(0, pairs, 64)]
    return float(torch.cat(scores).mean())


def nearest_ssim(queries: torch.Tensor, references: torch.Tensor, candidates: int = 32) -> torch.Tensor:
    """For each query image, its highest SSIM to any reference image (N,). The search is exact
    SSIM over the ``candidates`` references nearest in L2 at 32x32, which are the only ones
    that can plausibly score highest (an exhaustive SSIM search is ~1e6 full-size SSIMs)."""
    def small(images):
        return F.avg_pool2d(images.float() / 255, 8).flatten(1)

    ref_small = batched(small, references, 512)
    candidates = min(candidates, len(references))
    best = torch.empty(len(queries))
    for start in range(0, len(queries), 32):
        query = queries[start:start + 32]
        nearest = torch.cdist(small(query), ref_small).topk(candidates, largest=False).indices
        for row, (image, index) in enumerate(zip(query, nearest)):
            x = image[None].float().div(255).expand(candidates, -1, -1, -1)
            best[start + row] = ssim_torch(x, references[index].float() / 255).max()
    return best


def two_sample_accuracy(first: torch.Tensor, second: torch.Tensor, steps: int = 300,
                        seed: int = 0, batch_size: int = 32) -> float:
    """Held-out accuracy of a fresh SliceCNN trained for ``steps`` Adam steps to tell ``first``
    from ``second``. Each set is split in half at random: one half trains, the other scores."""
    generator = torch.Generator().manual_seed(seed)
    n = min(len(first), len(second))
    first, second = (s[torch.randperm(len(s), generator=generator)[:n]] for s in (first, second))
    half = n // 2
    train_x = torch.cat([first[:half], second[:half]])
    train_y = torch.cat([torch.zeros(half), torch.ones(half)]).long()
    test_x = torch.cat([first[half:], second[half:]])
    test_y = torch.cat([torch.zeros(n - half), torch.ones(n - half)]).long()
    torch.manual_seed(seed)
    model = SliceCNN(num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(train_x), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(train_x[index]), train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    predictions = batched(model, test_x).argmax(1)
    return float((predictions == test_y).float().mean())


def generation_report(samples: torch.Tensor, train: torch.Tensor, validate: torch.Tensor,
                      feature_net: SliceCNN, seed: int = 0, classifier_steps: int = 300,
                      pairs: int = 500, reconstructions: torch.Tensor | None = None) -> dict:
    """Every image metric for ``samples`` beside its real-vs-real reference. ``train`` and
    ``validate`` are uint8 image sets; the references use as many real images as samples.
    ``reconstructions`` (the VQ-VAE's own of validate) add what a perfect prior would score:
    samples are decoded, so the decoder's look alone can give them away."""
    n = len(samples)
    generator = torch.Generator().manual_seed(seed)
    train_subset = train[torch.randperm(len(train), generator=generator)[:n]]
    validate_subset = validate[torch.randperm(len(validate), generator=generator)[:n]]
    feature_net.eval()
    features = {name: batched(feature_net.features, images) for name, images in
                (("samples", samples), ("train", train_subset), ("validate", validate))}
    validate_nearest = nearest_ssim(validate_subset, train)
    sample_nearest = nearest_ssim(samples, train)
    threshold = float(torch.quantile(validate_nearest, 0.99))
    ceiling = {}
    if reconstructions is not None:
        ceiling = {"frechet_reconstructions": frechet_distance(batched(feature_net.features, reconstructions),
                                                               features["validate"]),
                   "two_sample_accuracy_reconstructions": two_sample_accuracy(
                       reconstructions, validate_subset, classifier_steps, seed)}
    return {
        **ceiling,
        "images": n,
        "frechet": frechet_distance(features["samples"], features["validate"]),
        "frechet_reference": frechet_distance(features["train"], features["validate"]),
        "ms_ssim_pairs": mean_pair_ms_ssim(samples, pairs, seed),
        "ms_ssim_pairs_reference": mean_pair_ms_ssim(validate, pairs, seed),
        "nearest_train_ssim_mean": float(sample_nearest.mean()),
        "nearest_train_ssim_max": float(sample_nearest.max()),
        "nearest_train_ssim_mean_reference": float(validate_nearest.mean()),
        "nearest_train_ssim_p99_reference": threshold,
        "samples_above_p99": int((sample_nearest > threshold).sum()),
        "two_sample_accuracy": two_sample_accuracy(samples, validate_subset, classifier_steps, seed),
        "two_sample_accuracy_reference": two_sample_accuracy(train_subset, validate_subset,
                                                             classifier_steps, seed),
    }
