"""The VQ-VAE: a convolutional encoder, the vector quantiser, and a mirrored decoder.

A 256x256 slice goes down by a factor ``downsample`` (4, 8 or 16) to a grid of codebook
indices and back. The default f=8 gives a 32x32 grid: 1024 codes of log2(512)=9 bits, i.e.
0.14 bits per pixel, small enough for the PixelCNN prior to sample quickly.

Saved and loaded the Hugging Face way (``config.json`` + ``model.safetensors``) through
``PyTorchModelHubMixin``: ``VQVAE.from_pretrained(dir_or_repo_id)``, ``model.save_pretrained(dir)``.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .quantizer import VectorQuantizer


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), the block of the original VQ-VAE."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1),
                                   nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x):
        return x + self.block(x)


def zero_start(layer: nn.Module) -> nn.Module:
    """``layer`` with its weight and bias zeroed: the last layer of a part added to a trained
    model, so that the model with the part is exactly the model without it until it trains."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def stage_widths(downsample: int, base: int, hidden: int) -> list[int]:
    """Channels after each stride-2 stage: doubling from ``base``, ending at ``hidden``."""
    stages = int(math.log2(downsample))
    if 2 ** stages != downsample or not 1 <= stages <= 5:
        raise ValueError(f"downsample must be a power of two between 2 and 32, got {downsample}")
    return [min(base * 2 ** i, hidden) for i in range(stages - 1)] + [hidden]


class Encoder(nn.Module):
    def __init__(self, in_channels, downsample, base, hidden, res_blocks, res_hidden, code_dim):
        super().__init__()
        layers, previous = [], in_channels
        for i, width in enumerate(stage_widths(downsample, base, hidden)):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(previous, width, 4, stride=2, padding=1))
            previous = width
        layers.append(nn.Conv2d(hidden, hidden, 3, padding=1))
        layers += [ResidualBlock(hidden, res_hidden) for _ in range(res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class TextureHead(nn.Module):
    """Width where the texture is drawn: the last inner stage's features, upsampled by its own
    transposed convolution to full resolution with ``channels`` channels, a few residual blocks
    there, and a 3x3 convolution to a correction added to the decoder's output. A thin decoder
    draws the 256x256 image with one 16 -> 1 transposed convolution; gyri and speckle need more.

    ``noise``: per-pixel Gaussian noise added to the full-resolution features with a learned
    per-channel scale (Karras et al. 2019, StyleGAN), so texture that the codes do not determine
    (MRI speckle) can be drawn rather than averaged away. In eval mode the noise comes from a
    fixed seed, so a code grid always decodes to the same image.

    The output convolution and the noise scales start at zero: a trained decoder that takes the
    head on is exactly where it was (``train.vqvae --init --decoder-only --texture-channels C``)."""

    def __init__(self, in_channels: int, channels: int, blocks: int, out_channels: int, noise: bool):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, channels, 4, stride=2, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(channels, channels) for _ in range(blocks)))
        self.noise_scale = nn.Parameter(torch.zeros(channels)) if noise else None
        self.out = nn.Sequential(nn.ReLU(), zero_start(nn.Conv2d(channels, out_channels, 3, padding=1)))

    def forward(self, features):
        h = self.up(torch.relu(features))
        if self.noise_scale is not None:
            shape = (h.shape[0], 1, *h.shape[2:])
            generator = None if self.training else torch.Generator(h.device).manual_seed(0)
            noise = torch.randn(shape, generator=generator, device=h.device, dtype=h.dtype)
            h = h + self.noise_scale.view(1, -1, 1, 1).to(h.dtype) * noise
        return self.out(self.blocks(h))


def image_seeds(images: torch.Tensor) -> list[int]:
    """A seed per image from its content at 8-bit precision: a fixed pseudo-random weighting of
    its pixels (Knuth's multiplicative hash of the index), summed modulo 2^31."""
    levels = images.detach().float().mul(255.0).round().long().flatten(1)
    index = torch.arange(levels.shape[1], device=images.device)
    weights = (index * 2654435761 + 1) % (2 ** 31)  # products stay far below 2^63 for 8-bit levels
    return [int(seed) for seed in ((levels * weights).sum(1) % (2 ** 31)).tolist()]


def low_pass(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, H, W) through a separable Gaussian of ``sigma`` pixels (reflected edges, radius
    3 sigma), differentiable: what the reconstruction loss sees under frequency separation, and
    what the detail head's ``highpass`` takes out of its correction."""
    radius = max(1, int(3 * sigma + 0.5))  # as scipy.ndimage.gaussian_filter(truncate=3)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


class DetailHead(nn.Module):
    """The realistic decoder's last stage: fine detail drawn on the faithful decoder's finished
    image. It reads that image (clamped to [0, 1], as decode shows it) and ``noise`` channels of
    per-pixel Gaussian noise at full resolution, and adds a correction from a few residual blocks
    of ``channels``. Why on the image, not on the decoder's features: the faithful image is right
    at every scale coarser than a 2-pixel blur (``train.evaluate_generation --bands 2``: below that
    blur, with the real slice's finer detail added, it passes the two-sample test, 0.500), so only
    finer detail is missing. An early probe (before the test split by subject) found unrelated
    real detail on the faithful image told apart only 57 % of the time; the subject-split test
    finds it (0.937, the next subject's detail below a 2-pixel blur): the detail has to be the
    slice's own, in place, which a head reading the image can sharpen (README, "Which band gives a
    decoder away"). The head still reads a source of randomness for what the image does not fix
    (the noise, from the first step: a head that must learn to open a zero-started noise gate
    locks its texture to the code grid instead, as every texture-head run here did). Trained by
    ``train.realistic`` against a whole-slice discriminator; the output convolution starts at zero,
    so an untrained head is the identity. In eval mode each image's noise is seeded by its own
    content (``image_seeds``), so a code grid always decodes to the same image whatever batch it
    is in, and no two images share a noise field (one fixed field for every image would be a
    pattern a classifier can learn).

    ``highpass`` (pixels; 0 = off): the correction minus its Gaussian blur of that sigma, so the
    head draws only detail and the image's coarse intensity stays the faithful decoder's (the
    low/high split of frequency separation, Fritsche et al. 2019, built in rather than asked of
    a loss). Without it, a head trained 75 minutes darkened the brain by 1.6 grey levels and
    flattened its 4x4-pooled contrast, which the faithful decoder matches, and a classifier
    told its reconstructions apart at 64x64 more often than the faithful ones (0.70 vs 0.59).

    ``mid_channels`` (0 = off): a half-resolution branch of ``mid_blocks`` residual blocks, its
    output added to the full-resolution features before their blocks. Why: the full-resolution
    blocks see 13 pixels, too few to redraw a gyrus that the faithful decoder blurred over
    several; at half resolution, three blocks of twice the width take fewer multiply-adds than
    the four at full resolution (2.3 against 2.7 G for a 256x256 slice at 64 and 32 channels),
    and the head then sees 27 pixels. The way back up is nearest upsampling of a 1x1
    convolution, not a transposed convolution, which draws checkerboards (Odena et al. 2016,
    "Deconvolution and Checkerboard Artifacts"). That convolution starts at zero, so a trained
    head takes the branch on exactly where it was (``train.realistic --init HEAD
    --detail-mid-channels C``)."""

    def __init__(self, out_channels: int, channels: int, blocks: int, noise: int, highpass: float = 0.0,
                 mid_channels: int = 0, mid_blocks: int = 3):
        super().__init__()
        self.noise, self.highpass = noise, highpass
        self.precision = "fp32"  # or "bf16": how it draws in eval (``precision.choose_detail_precision``)
        self.inp = nn.Conv2d(out_channels + noise, channels, 3, padding=1)
        self.mid = None
        if mid_channels:
            self.mid = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, mid_channels, 3, stride=2, padding=1),
                                     *(ResidualBlock(mid_channels, mid_channels) for _ in range(mid_blocks)),
                                     nn.ReLU(), zero_start(nn.Conv2d(mid_channels, channels, 1)),
                                     nn.Upsample(scale_factor=2))
        self.blocks = nn.Sequential(*(ResidualBlock(channels, channels) for _ in range(blocks)))
        self.out = nn.Sequential(nn.ReLU(), zero_start(nn.Conv2d(channels, out_channels, 3, padding=1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        shown = image.clamp(0.0, 1.0)  # the detail is drawn on what decode would show
        shape = (self.noise, *image.shape[2:])
        if self.training:
            noise = torch.randn((image.shape[0], *shape), device=image.device, dtype=image.dtype)
        else:
            generator = torch.Generator(image.device)
            noise = torch.stack([torch.randn(shape, generator=generator.manual_seed(seed), device=image.device,
                                             dtype=image.dtype) for seed in image_seeds(shown)])
        # (not autocast(enabled=False) in fp32: inside a trainer's bf16 autocast that would switch it off)
        with (torch.autocast(image.device.type, dtype=torch.bfloat16)
              if not self.training and self.precision == "bf16" else nullcontext()):
            features = self.inp(torch.cat([2 * shown - 1, noise], 1))
            if self.mid is not None:
                features = features + self.mid(features)
            detail = self.out(self.blocks(features))
        detail = detail.to(shown.dtype)
        if self.highpass:
            detail = detail - low_pass(detail, self.highpass)
        return shown + detail


class Decoder(nn.Module):
    """Mirror of the encoder. ``refine_blocks`` adds residual blocks after each inner upsampling
    stage, where the thin high-resolution layers otherwise draw fine detail with one transposed
    convolution each. They are kept apart from ``net`` (whose weight names stay those of a
    decoder without them) and start as the identity, so a trained decoder can take them on and
    be fine-tuned from exactly where it was (``train.vqvae --init --decoder-only``)."""

    def __init__(self, out_channels, downsample, base, hidden, res_blocks, res_hidden, code_dim,
                 refine_blocks: int = 0, texture_channels: int = 0, texture_blocks: int = 2,
                 texture_noise: bool = True, detail_channels: int = 0, detail_blocks: int = 4,
                 detail_noise: int = 4, detail_highpass: float = 0.0, detail_mid_channels: int = 0,
                 detail_mid_blocks: int = 3):
        super().__init__()
        layers = [nn.Conv2d(code_dim, hidden, 3, padding=1)]
        layers += [ResidualBlock(hidden, res_hidden) for _ in range(res_blocks)]
        widths = stage_widths(downsample, base, hidden)[::-1][1:] + [out_channels]
        previous, self.refine = hidden, nn.ModuleDict()
        for k, width in enumerate(widths):
            layers += [nn.ReLU(), nn.ConvTranspose2d(previous, width, 4, stride=2, padding=1)]
            if refine_blocks and k + 1 < len(widths):  # keyed by the net index they follow
                self.refine[str(len(layers) - 1)] = nn.Sequential(
                    *(ResidualBlock(width, width) for _ in range(refine_blocks)))
            previous = width
        self.net = nn.Sequential(*layers)
        # the texture head reads the features just before the output stage's ReLU + upsampling
        self.texture_input = len(layers) - 3 if texture_channels else None
        self.texture = (TextureHead(widths[-2] if len(widths) > 1 else hidden, texture_channels, texture_blocks,
                                    out_channels, texture_noise) if texture_channels else None)
        self.detail = (DetailHead(out_channels, detail_channels, detail_blocks, detail_noise, detail_highpass,
                                  detail_mid_channels, detail_mid_blocks) if detail_channels else None)
        for block in self.refine.modules():
            if isinstance(block, ResidualBlock):
                zero_start(block.block[-1])

    def forward(self, z, texture: bool = True):
        """``texture=False``: the base decoder's output alone, without the texture and detail
        heads: a fraction of the cost, for judging many code choices (``vqvae/code_search.py``)."""
        base = self.base(z, texture)
        return base if self.detail is None or not texture else self.detail(base)

    def base(self, z, texture: bool = True):
        """The decoder without its detail head (what ``train.realistic`` keeps frozen)."""
        features = z if self.texture_input == -1 else None
        for index, layer in enumerate(self.net):
            z = layer(z)
            if str(index) in self.refine:
                z = self.refine[str(index)](z)
            if index == self.texture_input:
                features = z
        return z if self.texture is None or not texture else z + self.texture(features)


class VQVAE(nn.Module, PyTorchModelHubMixin, library_name="brainvq",
            tags=["vq-vae", "brain-mri", "oasis"], license="mit"):
    """Slices in [0, 1], shape (B, 1, H, W) with H and W divisible by ``downsample``."""

    def __init__(self, downsample: int = 8, num_codes: int = 512, code_dim: int = 64,
                 base_channels: int = 16, hidden_channels: int = 64, res_blocks: int = 2,
                 res_hidden: int = 64, in_channels: int = 1, ema_decay: float = 0.99,
                 commitment: float = 0.25, dead_threshold: float = 1.0, refine_blocks: int = 0,
                 texture_channels: int = 0, texture_blocks: int = 2, texture_noise: bool = True,
                 detail_channels: int = 0, detail_blocks: int = 4, detail_noise: int = 4,
                 detail_highpass: float = 0.0, detail_mid_channels: int = 0, detail_mid_blocks: int = 3):
        super().__init__()
        self.downsample, self.num_codes = downsample, num_codes
        shape = (downsample, base_channels, hidden_channels, res_blocks, res_hidden, code_dim)
        self.encoder = Encoder(in_channels, *shape)
        self.quantizer = VectorQuantizer(num_codes, code_dim, decay=ema_decay,
                                         commitment=commitment, dead_threshold=dead_threshold)
        self.decoder = Decoder(in_channels, *shape, refine_blocks=refine_blocks, texture_channels=texture_channels,
                               texture_blocks=texture_blocks, texture_noise=texture_noise,
                               detail_channels=detail_channels, detail_blocks=detail_blocks, detail_noise=detail_noise,
                               detail_highpass=detail_highpass, detail_mid_channels=detail_mid_channels,
                               detail_mid_blocks=detail_mid_blocks)

    @property
    def bits_per_pixel(self) -> float:
        """Rate of the code: log2(K) bits per code, one code per f x f pixels."""
        return math.log2(self.num_codes) / self.downsample ** 2

    def forward(self, x):
        """-> (reconstruction, commitment loss, codes (B, H/f, W/f))."""
        z = self.encoder(x)
        quantised, commit_loss, codes = self.quantizer(z)
        return self.decoder(quantised.to(z.dtype)), commit_loss, codes

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Slices (B, 1, H, W) in [0, 1] -> code grid (B, H/f, W/f) of int64."""
        z = self.encoder(x)
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        return self.quantizer.nearest(flat).view(b, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, draft: bool = False) -> torch.Tensor:
        """Code grid (B, h, w) -> slices (B, 1, h*f, w*f) clamped to [0, 1]. ``draft``: without the
        texture and detail heads (a fraction of the cost; for frames that are shown in passing)."""
        return self.decoder(self.quantizer.lookup(codes), texture=not draft).clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (reconstruction in [0, 1], codes)."""
        codes = self.encode(x)
        return self.decode(codes), codes
