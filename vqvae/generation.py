"""Generation metrics: how close decoded prior samples (or a decoder's reconstructions) come to
real slices, each beside the value the same measure gives for real slices against real slices.

- Fréchet distance between Gaussians fitted to features of ``SliceCNN``, a small CNN trained
  on OASIS train to predict the slice position k (the domain's stand-in for the ImageNet
  network of FID, Heusel et al. 2017); reference: train vs validate.
- Diversity: mean MS-SSIM of random pairs (lower = more varied); reference: validate pairs.
- Memorisation: each image's SSIM to its nearest training slice; a sample above the 99th
  percentile of validate's nearest-train SSIM is a suspected copy.
- Classifier two-sample test (Lopez-Paz and Oquab 2017): a fresh ``SliceCNN`` learns to tell two
  sets apart on some subjects and is scored on the others (0.5 = indistinguishable). Split by
  subject: one person's 32 slices are near-duplicates, so a split by image lets the classifier
  recognise people instead of telling sets apart. Run at full 256x256 resolution it judges
  texture (a 1-pixel blur is told apart every time); at 64x64, anatomy.

Images are uint8 tensors (N, 1, 256, 256), as ``vqvae.data`` loads them; a ``SliceSet`` carries
their subjects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from scipy import linalg, ndimage
from torch import nn

from .images import to_unit
from .metrics import ms_ssim_torch, ssim_torch

OASIS_MEAN, OASIS_STD = 0.17, 0.25  # of full scale, over OASIS slices (half of them background)


class SliceCNN(nn.Module, PyTorchModelHubMixin, library_name="brainvq", license="mit",
               tags=["brain-mri", "oasis", "evaluation"]):
    """Four stride-2 convolutions (with batch norm: without it this net sat at chance for
    thousands of steps) on the slice average-pooled by ``input_pool``, a 4x4 spatial summary, one
    hidden layer (the features), and ``num_classes`` logits."""

    def __init__(self, num_classes: int = 32, width: int = 32, feature_dim: int = 128, input_pool: int = 2):
        super().__init__()
        self.input_pool = input_pool
        widths = [1, width // 2, width, 2 * width, 2 * width]
        layers = []
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(16 * widths[-1], feature_dim), nn.ReLU())
        self.out = nn.Linear(feature_dim, num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1, H, W) -> float, pooled, roughly zero mean and unit spread."""
        return self.normalise(to_unit(images))

    def normalise(self, unit: torch.Tensor) -> torch.Tensor:
        """Floats in [0, 1] -> pooled, roughly zero mean and unit spread."""
        if self.input_pool > 1:
            unit = F.avg_pool2d(unit, self.input_pool)
        return (unit - OASIS_MEAN) / OASIS_STD

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.convs(self.prepare(images)))

    def judge(self, unit: torch.Tensor) -> torch.Tensor:
        """Logits of images already as floats in [0, 1], differentiable in them: the net as the
        realistic decoder's discriminator (``vqvae/realistic.py``)."""
        return self.out(self.hidden(self.convs(self.normalise(unit))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(images))


def batched(fn, images: torch.Tensor, batch_size: int = 128, device: torch.device | str = "cpu") -> torch.Tensor:
    """fn over images in batches (moved to ``device``), the results concatenated on the CPU."""
    with torch.no_grad():
        return torch.cat([fn(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])


def position_accuracy(model: SliceCNN, images: torch.Tensor, positions: torch.Tensor) -> dict[str, float]:
    """How often the position network reads slice position k exactly, and within one."""
    model.eval()
    predicted = batched(model, images, device=next(model.parameters()).device).argmax(1)
    error = (predicted - positions).abs()
    return {"accuracy": float((error == 0).float().mean()), "within_one": float((error <= 1).float().mean())}


def frechet_from_statistics(mu_a, cov_a, mu_b, cov_b) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the matrix square root."""
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # near-singular product: regularise as FID's reference code does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    a, b = a.double().numpy(), b.double().numpy()
    return frechet_from_statistics(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def random_pairs(n: int, pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` random index pairs (i, j) with i != j."""
    first = torch.randint(n, (pairs,), generator=generator)
    second = (first + torch.randint(1, n, (pairs,), generator=generator)) % n
    return first, second


def mean_pair_ms_ssim(images: torch.Tensor, pairs: int = 500, seed: int = 0) -> float:
    """Mean MS-SSIM between random pairs of distinct images: lower means more diverse."""
    i, j = random_pairs(len(images), pairs, torch.Generator().manual_seed(seed))
    scores = [ms_ssim_torch(to_unit(images[i[k:k + 64]]), to_unit(images[j[k:k + 64]]))
              for k in range(0, pairs, 64)]
    return float(torch.cat(scores).mean())


def nearest_ssim(queries: torch.Tensor, references: torch.Tensor, candidates: int = 32) -> torch.Tensor:
    """For each query image, its highest SSIM to any reference image (N,). The search is exact
    SSIM over the ``candidates`` references nearest in L2 at 32x32, which are the only ones
    that can plausibly score highest (an exhaustive SSIM search is ~1e6 full-size SSIMs)."""
    def small(images):
        return F.avg_pool2d(to_unit(images), 8).flatten(1)

    ref_small = batched(small, references, 512)
    candidates = min(candidates, len(references))
    best = torch.empty(len(queries))
    for start in range(0, len(queries), 32):
        query = queries[start:start + 32]
        nearest = torch.cdist(small(query), ref_small).topk(candidates, largest=False).indices
        for row, (image, index) in enumerate(zip(query, nearest)):
            x = to_unit(image[None]).expand(candidates, -1, -1, -1)
            best[start + row] = ssim_torch(x, to_unit(references[index])).max()
    return best


def _low_pass(images: torch.Tensor, sigma: float) -> np.ndarray:
    """(N, 1, H, W) images -> float32 arrays, each blurred by a Gaussian of ``sigma`` pixels."""
    return ndimage.gaussian_filter(images.numpy().astype(np.float32), sigma=(0, 0, sigma, sigma))


def _as_uint8(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.round(values), 0, 255).astype(np.uint8))


def blurred(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """uint8 images through a Gaussian blur of ``sigma`` pixels: the calibration case a
    full-resolution two-sample test must tell apart."""
    return _as_uint8(_low_pass(images, sigma))


def band_swap(decoded: torch.Tensor, real: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 hybrids: each decoded image below a Gaussian blur of ``sigma`` pixels plus its real
    slice's detail finer than that blur. Why: a two-sample test of these against real slices
    says which band gives a decoder away. Where the hybrids pass, the decoder is right at every
    scale coarser than ``sigma`` and only the finer band is left to draw; where they are still
    told apart, the decoder differs at coarser scales too (``train.evaluate_generation --bands``)."""
    if decoded.shape != real.shape:
        raise ValueError(f"decoded images {tuple(decoded.shape)} and real slices {tuple(real.shape)} differ in shape")
    return _as_uint8(_low_pass(decoded, sigma) + real.numpy().astype(np.float32) - _low_pass(real, sigma))


# -- the two-sample test ---------------------------------------------------------------------

@dataclass
class Labelled:
    """Images with the subject of each (N,); ``None``: every image is its own subject (samples)."""
    images: torch.Tensor
    subjects: torch.Tensor | None = None

    def groups(self, offset: int) -> torch.Tensor:
        """Subject ids, made unique per set for images without subjects (offset + index)."""
        if self.subjects is None or (self.subjects < 0).all():
            return offset + torch.arange(len(self.images))
        return self.subjects.long()


def _balanced(index_a: torch.Tensor, index_b: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """As many of each set as the smaller one has, drawn at random: a side never wins by size."""
    n = min(len(index_a), len(index_b))
    return (index_a[torch.randperm(len(index_a), generator=generator)[:n]],
            index_b[torch.randperm(len(index_b), generator=generator)[:n]])


def subject_split(first: Labelled, second: Labelled, generator: torch.Generator):
    """Half of each set's subjects train the classifier, the other half score it. A subject in
    both sets (a real slice and its reconstruction) falls on the same side in both.
    -> ((train indices of first, of second), (test indices of first, of second)), balanced."""
    groups_a, groups_b = first.groups(10**9), second.groups(2 * 10**9)
    subjects_a, subjects_b = torch.unique(groups_a), torch.unique(groups_b)
    shared = subjects_a[torch.isin(subjects_a, subjects_b)]
    chosen = []
    for subjects in (shared, subjects_a[~torch.isin(subjects_a, shared)], subjects_b[~torch.isin(subjects_b, shared)]):
        order = torch.randperm(len(subjects), generator=generator)
        chosen.append(subjects[order[:(len(subjects) + int(torch.randint(2, (1,), generator=generator))) // 2]])
    chosen = torch.cat(chosen)
    in_train_a, in_train_b = torch.isin(groups_a, chosen), torch.isin(groups_b, chosen)
    train = _balanced(in_train_a.nonzero()[:, 0], in_train_b.nonzero()[:, 0], generator)
    test = _balanced((~in_train_a).nonzero()[:, 0], (~in_train_b).nonzero()[:, 0], generator)
    if min(len(train[0]), len(test[0])) < 2:
        raise ValueError("too few subjects on one side of the two-sample test")
    return train, test


def two_sample_scores(first: Labelled | torch.Tensor, second: Labelled | torch.Tensor, steps: int = 300,
                      seed: int = 0, batch_size: int = 32, input_pool: int = 1) -> dict[str, float]:
    """A fresh SliceCNN trained for ``steps`` Adam steps to tell ``first`` from ``second``, split
    by subject (``subject_split``), at 256 / ``input_pool`` resolution, scored on the held-out
    subjects: {"accuracy", "loss", "auc"} (the AUC: ``rank_auc`` of its logit margin). The loss is
    the held-out cross-entropy in nats, falling towards 0 as the sets grow easier to tell apart:
    where accuracy has saturated at 1.0 it still ranks candidates. It is 0.693 (ln 2) for a
    classifier that learned nothing, and more for one that learned the training subjects
    confidently: OASIS train vs validate gives ~3.3."""
    first, second = (s if isinstance(s, Labelled) else Labelled(s) for s in (first, second))
    generator = torch.Generator().manual_seed(seed)
    (train_a, train_b), (test_a, test_b) = subject_split(first, second, generator)
    train_x = torch.cat([first.images[train_a], second.images[train_b]])
    train_y = torch.cat([torch.zeros(len(train_a)), torch.ones(len(train_b))]).long()
    test_x = torch.cat([first.images[test_a], second.images[test_b]])
    test_y = torch.cat([torch.zeros(len(test_a)), torch.ones(len(test_b))]).long()
    torch.manual_seed(seed)
    model = SliceCNN(num_classes=2, input_pool=input_pool)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(train_x), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(train_x[index]), train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    logits = batched(model, test_x)
    return {"accuracy": float((logits.argmax(1) == test_y).float().mean()),
            "loss": float(F.cross_entropy(logits, test_y)),
            "auc": rank_auc(logits[:, 1] - logits[:, 0], test_y)}


def rank_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for labels 1 against 0 (Mann-Whitney: the chance
    that a random 1 scores above a random 0, ties counting half). Why beside the accuracy: on new
    subjects the classifier's threshold can miss while its ranking does not. On the shipped
    realistic head, two of three subject splits called nearly every held-out slice fake (accuracy
    0.50) while still scoring real slices above the head's."""
    scores, labels = scores.double(), labels.bool()
    ones, zeros = scores[labels], scores[~labels]
    if not len(ones) or not len(zeros):
        raise ValueError("the AUC needs scores of both classes")
    above = (ones[:, None] > zeros[None, :]).double().mean() + 0.5 * (ones[:, None] == zeros[None, :]).double().mean()
    return float(above)


def two_sample_test(first, second, repeats: int = 3, steps: int = 300, seed: int = 0,
                    input_pool: int = 1) -> dict:
    """``two_sample_scores`` over ``repeats`` subject splits (seed, seed + 1, ...): the mean, spread
    and runs of the accuracy, and the mean held-out loss."""
    runs = [two_sample_scores(first, second, steps, seed + r, input_pool=input_pool) for r in range(repeats)]
    accuracy = [run["accuracy"] for run in runs]
    return {"mean": float(np.mean(accuracy)), "std": float(np.std(accuracy)), "runs": accuracy,
            "loss": float(np.mean([run["loss"] for run in runs])),
            "auc": float(np.mean([run["auc"] for run in runs]))}


def two_sample_table(candidates: dict[str, Labelled | tuple[Labelled, Labelled]], train: Labelled,
                     validate: Labelled, repeats: int = 3, steps: int = 300, seed: int = 0,
                     pools: tuple[int, ...] = (1, 4)) -> list[dict]:
    """Each candidate set against ``validate`` (or a candidate pair against each other), below the
    calibration rows the same run gives: validate vs validate (two halves by subject: must be
    ~0.5), train vs validate (the real-vs-real reference: different people), validate vs validate
    blurred by 1 pixel (must be told apart at full resolution). One row per comparison, a column
    per resolution."""
    groups = validate.groups(0)  # subjects, or each image its own where names carry none
    half = torch.isin(groups, torch.unique(groups)[::2])
    rows = {
        "calibration: validate vs validate (two halves of the subjects)":
            (Labelled(validate.images[half], groups[half]), Labelled(validate.images[~half], groups[~half])),
        "reference: train vs validate (real vs real)": (train, validate),
        "calibration: validate blurred by 1 pixel vs validate":
            (Labelled(blurred(validate.images), validate.subjects), validate),
        **{name: sets if isinstance(sets, tuple) else (sets, validate) for name, sets in candidates.items()},
    }
    table = []
    for name, (a, b) in rows.items():
        row = {"comparison": name}
        for pool in pools:
            row[b.images.shape[-1] // pool] = two_sample_test(a, b, repeats, steps, seed, pool)
        table.append(row)
    return table


def format_two_sample_table(table: list[dict]) -> str:
    sizes = [k for k in table[0] if k != "comparison"]
    lines = ["| comparison | " + " | ".join(f"accuracy at {s}x{s} (held-out loss, AUC)" for s in sizes) + " |",
             "| --- |" + " --- |" * len(sizes)]
    for row in table:
        cells = [f"{row[s]['mean']:.3f} ± {row[s]['std']:.3f} ({row[s]['loss']:.3f}, {row[s]['auc']:.3f})"
                 for s in sizes]
        lines.append(f"| {row['comparison']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the whole report ------------------------------------------------------------------------

def sample_metrics(samples: torch.Tensor, train: Labelled, validate: Labelled, feature_net: SliceCNN,
                   seed: int = 0, pairs: int = 500) -> dict:
    """Fréchet distance, diversity and memorisation of ``samples``, each beside its real-vs-real
    reference computed from as many real images as there are samples."""
    n = len(samples)
    generator = torch.Generator().manual_seed(seed)
    train_subset = train.images[torch.randperm(len(train.images), generator=generator)[:n]]
    validate_subset = validate.images[torch.randperm(len(validate.images), generator=generator)[:n]]
    feature_net.eval()
    features = {name: batched(feature_net.features, images) for name, images in
                (("samples", samples), ("train", train_subset), ("validate", validate.images))}
    validate_nearest = nearest_ssim(validate_subset, train.images)
    sample_nearest = nearest_ssim(samples, train.images)
    threshold = float(torch.quantile(validate_nearest, 0.99))
    return {
        "images": n,
        "frechet": frechet_distance(features["samples"], features["validate"]),
        "frechet_reference": frechet_distance(features["train"], features["validate"]),
        "ms_ssim_pairs": mean_pair_ms_ssim(samples, pairs, seed),
        "ms_ssim_pairs_reference": mean_pair_ms_ssim(validate.images, pairs, seed),
        "nearest_train_ssim_mean": float(sample_nearest.mean()),
        "nearest_train_ssim_max": float(sample_nearest.max()),
        "nearest_train_ssim_mean_reference": float(validate_nearest.mean()),
        "nearest_train_ssim_p99_reference": threshold,
        "samples_above_p99": int((sample_nearest > threshold).sum()),
    }


SAMPLES_VS_RECONSTRUCTIONS = "samples vs reconstructions (one decoder: the prior's share)"


def generation_report(samples: torch.Tensor, train: Labelled, validate: Labelled,
                      feature_net: SliceCNN, seed: int = 0, classifier_steps: int = 300,
                      pairs: int = 500, repeats: int = 3,
                      reconstructions: torch.Tensor | None = None,
                      also: dict[str, Labelled | tuple[Labelled, Labelled]] | None = None) -> dict:
    """Every image metric for ``samples`` beside its real-vs-real reference (``sample_metrics``)
    and the two-sample test. ``reconstructions`` (the VQ-VAE's own of validate, in validate's
    order) add how far the decoder's look alone is from real slices, and samples against them:
    the same decoder on both sides, so what tells them apart is the codes, the prior's share of
    the samples' gap. ``also`` adds more sets (or pairs) to the two-sample test (e.g. another
    decoder's images)."""
    report = sample_metrics(samples, train, validate, feature_net, seed, pairs)
    sampled = Labelled(samples)
    candidates = {"samples vs validate": sampled}
    if reconstructions is not None:
        reconstructed = Labelled(reconstructions, validate.subjects)
        candidates["reconstructions vs validate"] = reconstructed
        candidates[SAMPLES_VS_RECONSTRUCTIONS] = (sampled, reconstructed)
        report["frechet_reconstructions"] = frechet_distance(batched(feature_net.features, reconstructions),
                                                             batched(feature_net.features, validate.images))
    candidates.update(also or {})
    report["two_sample"] = two_sample_table(candidates, train, validate, repeats, classifier_steps, seed)
    return report


def generation_table(report: dict) -> str:
    """The report as a Markdown table, each metric beside its real reference."""
    r = report
    rows = [
        ("prior NLL, bits/code (validate codes)", f"{r['nll_bits']:.3f}",
         f"uniform {r['uniform_bits']:.2f}, unigram {r['unigram_bits']:.2f}", "below unigram"),
        ("Fréchet distance (SliceCNN features)", f"{r['frechet']:.2f}",
         f"train vs validate {r['frechet_reference']:.2f}", f"<= 3x ({3 * r['frechet_reference']:.2f})"),
        ("diversity: mean MS-SSIM of pairs", f"{r['ms_ssim_pairs']:.3f}",
         f"validate pairs {r['ms_ssim_pairs_reference']:.3f}", "within 0.05"),
        ("nearest-train SSIM, mean / max", f"{r['nearest_train_ssim_mean']:.3f} / {r['nearest_train_ssim_max']:.3f}",
         f"validate mean {r['nearest_train_ssim_mean_reference']:.3f}, "
         f"p99 {r['nearest_train_ssim_p99_reference']:.3f}", ""),
        ("samples above validate's p99 (copies?)", f"{r['samples_above_p99']}", "", "<= 2 %"),
    ]
    if "sample_position_within_one" in r:
        rows.append(("SliceCNN reads the asked-for position (within 1)", f"{r['sample_position_within_one']:.3f}",
                     f"validate {r['feature_net_within_one']:.3f} (exact {r['feature_net_accuracy']:.3f})", ">= 0.80"))
    if "frechet_reconstructions" in r:
        rows.insert(2, ("Fréchet of the VQ-VAE's validate reconstructions vs validate (the decoder's look)",
                        f"{r['frechet_reconstructions']:.2f}", f"train vs validate {r['frechet_reference']:.2f}", ""))
    lines = ["| metric | value | real reference | target |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    if "two_sample" in r:
        lines += ["", "Classifier two-sample test (split by subject; mean ± std over repeats; 0.5 = indistinguishable):",
                  "", format_two_sample_table(r["two_sample"])]
    return "\n".join(lines)
