"""Adversarial training of a decoder for realistic texture (VQGAN's recipe, Esser et al. 2021,
"Taming Transformers"): a decoder trained on pixel losses at 0.14 bits per pixel must blur (the
perception-distortion trade-off, Blau and Michaeli 2018); a discriminator that judges patches
teaches it to draw plausible texture instead, while the reconstruction loss keeps anatomy where
it is. Each trick is a setting of ``train.vqvae --adversarial`` with a safe default:

- ``PatchDiscriminator``: PatchGAN (Isola et al. 2017, pix2pix): strided convolutions ending in
  a map of real/fake logits, each judging a ~70-pixel patch. ``norm``: group norm (the default)
  takes its statistics per image over space, so it rescales away how much fine detail an image
  holds, which is what tells a blurred slice; batch norm keeps it (with the decoder fixed, a
  probe on this data reached hinge loss 0.37 with batch norm against 1.03 with group norm in
  300 steps). The ``Adversary`` always judges real slices and reconstructions in one batch, so
  batch statistics never describe one side alone.
- hinge losses for both players (Lim and Ye 2017; as VQGAN).
- ``adaptive_weight``: VQGAN's balance, |grad of the reconstruction loss| / |grad of the
  adversarial loss| at the decoder's last layer, clamped (unclamped it ran to ~185 and the
  reconstructions fell apart in a probe on this data).
- feature matching (Wang et al. 2018, pix2pixHD): L1 between the discriminator's features of the
  real slice and of its reconstruction, a perceptual loss learned on this data (pretrained VGG /
  LPIPS networks cannot be downloaded here).
- a delayed start: the discriminator joins after ``disc_start`` steps.
- ``model.low_pass`` (frequency separation, Fritsche et al. 2019, "Frequency Separation for
  Real-World Super-Resolution"): the reconstruction loss compares Gaussian-blurred images
  only, so detail finer than the blur answers to the discriminator alone. Without it, every
  stroke of texture the codes do not fix is paid for twice by the pixel loss (drawn where the
  real slice had none, missing where it had some), and the decoder's best answer stays a blur.
- ``spectral_loss`` (after Durall et al. 2020, "Watch your Up-Convolution"): the power spectra
  of reconstructions and real slices compared band by band. Transposed convolutions leave
  periodic traces a patch discriminator misses: on this data the faithful decoder put 22x the
  real power at the period-2 checkerboard frequency, an adversarial decoder 32x, and with a log
  spectral L1 (which weighs a peak no more than any other band) 10 000x within 15 minutes.
- ``grid_fingerprint``: a decoder draws each code's f x f cell through the same transposed
  convolutions, so texture it invents can lock to the code grid: the same small pattern in every
  cell, which no real slice has. Summed over a whole slice, a pattern of a grey level or two is
  what a classifier finds first. The per-phase mean of the high-passed image over the batch
  (f x f numbers) measures it; ``grid_fingerprint_loss`` pulls the reconstructions' towards the
  real slices'. Measured on validate: real slices 0.11 grey levels (spread over the 64 phases, the
  noise floor), the faithful decoder 0.19, an adversarial decoder 1.24, and 3.56 after 10 minutes
  of the spectral loss, which rewards texture power wherever it comes from.
- ``crop``: both players see the same random square crop of the real slice and of its
  reconstruction each step. A patch discriminator judges ~70-pixel patches wherever they are,
  so a 128-pixel crop loses it nothing and costs a quarter of the whole slice: measured by
  ``benchmarks/adversarial_step.py`` against the issue's <= 1.5x a plain step.

The discriminator sees what ``VQVAE.decode`` shows, the reconstruction clamped to [0, 1]: an
unclamped output below 0 in the background is something no real slice has and no user sees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Real/fake logits per patch of a (B, 1, H, W) image in [0, 1]; ``features`` also returns
    each block's activations for feature matching."""

    def __init__(self, channels: int = 32, layers: int = 3, in_channels: int = 1, norm: str = "group"):
        super().__init__()
        if norm not in ("group", "batch"):
            raise ValueError(f"norm must be 'group' or 'batch', not {norm!r}")
        blocks, previous = [], in_channels
        for i in range(layers):
            width = channels * 2 ** i
            normalise = (nn.Identity() if i == 0 else
                         nn.GroupNorm(8, width) if norm == "group" else nn.BatchNorm2d(width))
            blocks.append(nn.Sequential(nn.Conv2d(previous, width, 4, stride=2, padding=1), normalise,
                                        nn.LeakyReLU(0.2)))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(previous, 1, 3, padding=1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, activations = 2 * x - 1, []  # centred input
        for block in self.blocks:
            h = block(h)
            activations.append(h)
        return self.head(h), activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def feature_matching_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Mean L1 between the discriminator's activations on real and reconstructed slices."""
    return sum(F.l1_loss(f, r.detach()) for r, f in zip(real, fake)) / len(real)


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor,
                    last_layer: torch.Tensor, maximum: float) -> torch.Tensor:
    """VQGAN's weight of the adversarial loss: the ratio of the two losses' gradient norms at
    the decoder's last layer, so neither drowns the other, clamped to [0, maximum]."""
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    ratio = reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    return ratio.clamp(0.0, maximum).detach()


def block_power(images: torch.Tensor, block: int = 4) -> torch.Tensor:
    """(B, 1, H, W) -> the batch's mean power spectrum (H, W // 2 + 1), averaged over ``block`` x
    ``block`` neighbouring frequencies: a batch of eight slices gives a noisy estimate of each
    single frequency, and what a classifier sees is the power of a band, not of one bin."""
    power = torch.fft.rfft2(images.float(), norm="ortho").abs().square().mean(dim=(0, 1))
    return F.avg_pool2d(power[None, None], block, ceil_mode=True)[0, 0]


def spectral_loss(reconstruction: torch.Tensor, real: torch.Tensor, block: int = 4) -> torch.Tensor:
    """Per band of frequencies, the ratio r of the reconstructions' power to the real slices'
    (``block_power``; the batches' spectra compared, not each image's, so texture the codes do
    not fix may differ in phase, not in power), penalised by -log r where power is missing and
    by r - 1 where there is too much: a log would compress a 1000-fold checkerboard peak to 7,
    lost in the mean over thousands of bands, while it is what gives a decoder away."""
    ratio = (block_power(reconstruction, block) + 1e-10) / (block_power(real, block) + 1e-10)
    return torch.where(ratio < 1, -torch.log(ratio), ratio - 1).mean()


def grid_fingerprint(images: torch.Tensor, period: int) -> torch.Tensor:
    """(B, 1, H, W) -> (period, period): the batch's mean of the high-passed image (minus its
    local 9x9 mean) at each position within a ``period`` x ``period`` cell of the code grid."""
    x = images.float()
    detail = x - F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
    h, w = (detail.shape[-2] // period) * period, (detail.shape[-1] // period) * period
    cells = detail[..., :h, :w].reshape(*detail.shape[:-2], h // period, period, w // period, period)
    return cells.mean(dim=(0, 1, 2, 4))


def grid_fingerprint_loss(reconstruction: torch.Tensor, real: torch.Tensor, period: int) -> torch.Tensor:
    """Mean |difference| of the two batches' ``grid_fingerprint``s, in units of full scale."""
    return (grid_fingerprint(reconstruction, period) - grid_fingerprint(real, period)).abs().mean()


def random_crop(size: int, height: int, width: int) -> tuple[slice, slice]:
    """A random ``size`` square inside (height, width) from torch's generator (so a resumed run
    draws the same ones); the whole image when ``size`` is 0 or not smaller."""
    if not size or (size >= height and size >= width):
        return slice(None), slice(None)
    size_h, size_w = min(size, height), min(size, width)
    top = int(torch.randint(0, height - size_h + 1, ()))
    left = int(torch.randint(0, width - size_w + 1, ()))
    return slice(top, top + size_h), slice(left, left + size_w)


class Adversary:
    """The discriminator's side of a decoder's training step: the generator's extra loss terms,
    then one discriminator update on the same batch (and the same crop)."""

    def __init__(self, discriminator: PatchDiscriminator, optimizer: torch.optim.Optimizer,
                 last_layer: torch.Tensor, weight: float, adaptive_max: float, feature_matching: float,
                 crop: int = 0):
        self.discriminator, self.optimizer, self.last_layer = discriminator, optimizer, last_layer
        self.weight, self.adaptive_max, self.feature_matching = weight, adaptive_max, feature_matching
        self.crop, self.window = crop, (slice(None), slice(None))

    def shown(self, images: torch.Tensor) -> torch.Tensor:
        """What the discriminator judges: this step's crop, clamped as decode clamps."""
        return images[..., self.window[0], self.window[1]].clamp(0.0, 1.0)

    def judge(self, real: torch.Tensor, fake: torch.Tensor, context):
        """-> ((real logits, fake logits), (real features, fake features)), from one batch that
        holds both sides (see ``PatchDiscriminator``'s norm)."""
        with context:
            logits, features = self.discriminator.features(torch.cat([self.shown(real), self.shown(fake)]))
        n = len(real)
        return ((logits[:n].float(), logits[n:].float()),
                ([f[:n].float().detach() for f in features], [f[n:].float() for f in features]))

    def generator_loss(self, reconstruction_loss: torch.Tensor, reconstruction: torch.Tensor,
                       real: torch.Tensor, context) -> tuple[torch.Tensor, dict[str, float]]:
        """reconstruction loss + weight * adaptive weight * hinge + feature matching."""
        self.discriminator.requires_grad_(False)  # its gradients come from its own step only
        self.window = random_crop(self.crop, *real.shape[-2:])
        (_, fake_logits), (real_features, fake_features) = self.judge(real, reconstruction, context)
        adversarial = generator_hinge_loss(fake_logits)
        balance = (adaptive_weight(reconstruction_loss, adversarial, self.last_layer, self.adaptive_max)
                   if self.adaptive_max > 0 else torch.tensor(1.0))
        matching = feature_matching_loss(real_features, fake_features)
        total = reconstruction_loss + self.weight * balance * adversarial + self.feature_matching * matching
        return total, {"g_loss": adversarial.item(), "adv_weight": float(balance), "fm": matching.item()}

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, context) -> float:
        self.discriminator.requires_grad_(True)
        (real_logits, fake_logits), _ = self.judge(real, fake, context)
        loss = discriminator_hinge_loss(real_logits, fake_logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()
