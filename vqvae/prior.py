"""Gated PixelCNN prior over VQ-VAE code grids (van den Oord et al. 2016, "Conditional
Image Generation with PixelCNN Decoders").

Two stacks remove the blind spot of the original PixelCNN:
- the vertical stack sees every row above. Its convolution (kernel (k//2+1) x k, padded on top)
  covers the current row as well, so its output is only handed to the horizontal stack after a
  one-row shift down;
- the horizontal stack sees the current row to the left: kernel 1 x (k//2+1), padded on the left.
  In the first layer it is shifted one more column, which masks the current position.
Units are gated (tanh(a) * sigmoid(b)); the horizontal stack has residual connections and every
layer adds a skip output that feeds the head. The slice position k (0..31) enters as a learned
bias on every gate; index ``num_positions`` means "no position" (trained by dropping the
condition at random), which gives unconditional samples.

With ``coordinates`` > 0 the gates also get a location-dependent bias: the paper's spatial
conditioning (section 2.3, a map s = m(h) added to the gates through 1x1 convolutions), with a
learned map that is the same for every slice. OASIS slices are registered to one atlas, so where
a code sits says much about what it should be; without it the prior, whose receptive field spans
about 2 x layers columns, cannot tell where the head it has begun should close, and samples run
into the right edge. Each layer's projection starts at zero, so a prior trained without the map
is the exact starting point of one trained with it (``train.prior --init``).

With ``previous_slice`` > 0 the prior is conditioned on the code grid of the slice below (k - 1
of the same head), for sampling coherent volumes slice by slice: that grid is known in full
before the current one is drawn, so it enters like the location map, as a spatial gate bias
(embedded, one 3x3 convolution for a little context, then a zero-started 1x1 projection per
layer), and may look anywhere. Started from a trained prior (``train.prior --init``), it is
that prior exactly until training teaches it to use the slice below.

With ``attention_every`` > 0, a causal self-attention block follows every that-many gated
layers (``CausalAttention``; PixelSNAIL, Chen et al. 2018): the convolutions see about 2 x layers
columns and a few rows back, attention sees every code drawn so far, so the right hemisphere can
be drawn to match the left and the ventricles to match the rows above. Started from a prior
without attention (``train.prior --init``), it is that prior exactly: the blocks' outputs start
at zero.

Convolutions take no padding of their own: the padding is explicit (``_pad_vertical``,
``_pad_horizontal``) so that the cached sampler in ``vqvae/sampling.py`` can apply exactly the
same weights to a few rows or a single position.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


def gate(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    a, b = x.chunk(2, dim=dim)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel: int, num_conditions: int, first: bool, coordinates: int = 0,
                 previous_slice: int = 0):
        super().__init__()
        self.first, self.channels = first, channels
        self.v_height, self.v_width, self.h_width = kernel // 2 + 1, kernel, kernel // 2 + 1
        self.v_conv = nn.Conv2d(channels, 2 * channels, (self.v_height, self.v_width))
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, self.h_width))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.skip = nn.Conv2d(channels, channels, 1)
        self.condition = nn.Embedding(num_conditions, 4 * channels)  # gate biases: v then h
        nn.init.zeros_(self.condition.weight)
        self.coordinate = nn.Conv2d(coordinates, 4 * channels, 1, bias=False) if coordinates else None
        if self.coordinate is not None:
            nn.init.zeros_(self.coordinate.weight)
        self.previous = nn.Conv2d(previous_slice, 4 * channels, 1, bias=False) if previous_slice else None
        if self.previous is not None:
            nn.init.zeros_(self.previous.weight)

    def spatial_bias(self, coordinate_map: torch.Tensor | None, previous_map: torch.Tensor | None = None):
        """The gate biases that depend on where a code sits (the location map) and on the slice
        below: (1 or B, 2C, H, W) for v and for h, or 0s."""
        total = 0
        if self.coordinate is not None:
            total = self.coordinate(coordinate_map[None])
        if self.previous is not None and previous_map is not None:
            total = total + self.previous(previous_map)
        return (0, 0) if isinstance(total, int) else total.chunk(2, dim=1)

    def _pad_vertical(self, v):
        return F.pad(v, (self.v_width // 2, self.v_width // 2, self.v_height - 1, 0))

    def _pad_horizontal(self, h):
        if self.first:  # shift right by one: position j sees columns j-w .. j-1 only
            return F.pad(h, (self.h_width, 0))[..., :-1]
        return F.pad(h, (self.h_width - 1, 0))

    def forward(self, v, h, condition, coordinate_map=None, previous_map=None):
        """v, h: (B, C, H, W); condition: (B,) indices -> (v, h, skip)."""
        bias_v, bias_h = self.condition(condition)[:, :, None, None].chunk(2, dim=1)
        where_v, where_h = self.spatial_bias(coordinate_map, previous_map)
        bias_v, bias_h = bias_v + where_v, bias_h + where_h
        v_pre = self.v_conv(self._pad_vertical(v))
        v_from_above = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row i gets row i-1
        h_gated = gate(self.h_conv(self._pad_horizontal(h)) + self.v_to_h(v_from_above) + bias_h)
        h_new = self.h_out(h_gated) + (0 if self.first else h)
        return gate(v_pre + bias_v), h_new, self.skip(h_gated)


class CausalAttention(nn.Module):
    """Multi-head causal self-attention over the horizontal stack, added to it as a residual.

    The horizontal stack's features at grid position p depend only on codes before p, so p may
    attend to itself and to every earlier position in raster order: an inclusive causal mask
    (``is_causal``), which keeps the whole network causal. Keys and queries get a learned
    embedding of the grid position (attention alone cannot tell where a code sits). The output
    projection starts at zero, so adding blocks to a trained prior changes nothing until trained."""

    def __init__(self, channels: int, heads: int, grid_size: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention heads ({heads}) must divide the channels ({channels})")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.position = nn.Parameter(0.02 * torch.randn(grid_size * grid_size, channels))
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def queries_keys_values(self, h: torch.Tensor):
        """h (B, C, H, W) -> q, k, v (B, heads, H*W, C/heads)."""
        b, c = h.shape[:2]
        tokens = self.norm(h.flatten(2).transpose(1, 2)) + self.position
        return (t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2) for t in self.qkv(tokens).chunk(3, -1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, height, width = h.shape
        q, k, v = self.queries_keys_values(h)
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, -1, c)
        return h + self.out(mixed).transpose(1, 2).reshape(b, c, height, width)


class GatedPixelCNN(nn.Module, PyTorchModelHubMixin, library_name="brainvq",
                    tags=["pixelcnn", "brain-mri", "oasis"], license="mit"):
    def __init__(self, num_codes: int = 512, channels: int = 64, layers: int = 10,
                 kernel: int = 5, num_positions: int = 32, grid_size: int = 32, coordinates: int = 0,
                 previous_slice: int = 0, attention_every: int = 0, attention_heads: int = 2):
        super().__init__()
        self.num_codes, self.num_positions, self.grid_size = num_codes, num_positions, grid_size
        self.no_position = num_positions  # the extra condition index: unconditional
        self.embedding = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel, num_positions + 1, first=(i == 0),
                                               coordinates=coordinates, previous_slice=previous_slice)
                                    for i in range(layers))
        # Attention after layers every-1, 2*every-1, ... (never after the last: nothing would read it)
        self.attention = nn.ModuleDict({str(i): CausalAttention(channels, attention_heads, grid_size)
                                        for i in range(layers - 1) if attention_every and (i + 1) % attention_every == 0})
        self.previous_slice = previous_slice
        if previous_slice:  # the slice below: embedded codes, a little spatial context
            self.previous_embedding = nn.Embedding(num_codes, previous_slice)
            self.previous_context = nn.Conv2d(previous_slice, previous_slice, 3, padding=1)
        # Random, not zero: the layers' projections start at zero, and one of the two must not.
        self.coordinate_map = nn.Parameter(torch.randn(coordinates, grid_size, grid_size)) if coordinates else None
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, num_codes, 1))

    def conditions(self, positions: torch.Tensor | None, batch: int) -> torch.Tensor:
        return condition_indices(positions, batch, self.no_position, self.embedding.weight.device)

    def previous_map(self, previous: torch.Tensor | None) -> torch.Tensor | None:
        """The slice below's code grid (B, H, W) -> its spatial condition (B, P, H, W), or None."""
        if not self.previous_slice or previous is None:
            return None
        return torch.relu(self.previous_context(self.previous_embedding(previous).permute(0, 3, 1, 2)))

    def forward(self, codes: torch.Tensor, positions: torch.Tensor | None = None,
                previous: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, H, W) -> logits (B, K, H, W); logits at (i, j) depend only on codes
        before (i, j) in raster order (and on all of ``previous``, the slice below's codes)."""
        condition = self.conditions(positions, codes.shape[0])
        previous_map = self.previous_map(previous)
        x = self.embedding(codes).permute(0, 3, 1, 2)
        v, h, skips = x, x, 0
        for i, layer in enumerate(self.layers):
            v, h, skip = layer(v, h, condition, self.coordinate_map, previous_map)
            skips = skips + skip
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        return self.head(skips)

    def loss(self, codes, positions=None, previous=None) -> torch.Tensor:
        """Mean negative log-likelihood in nats per code."""
        return code_nll(self(codes, positions, previous), codes)


def condition_indices(positions: torch.Tensor | None, batch: int, no_position: int, device) -> torch.Tensor:
    """Slice positions (B,) with -1 or None meaning "no position" -> a prior's condition indices
    (``no_position`` is the extra index trained by dropping the position)."""
    if positions is None:
        return torch.full((batch,), no_position, dtype=torch.long, device=device)
    positions = positions.long()
    return torch.where(positions < 0, torch.full_like(positions, no_position), positions)


def code_nll(logits: torch.Tensor, codes: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood in nats of ``codes`` (B, H, W) under ``logits`` (B, K, H, W):
    the prior's training loss (``reduction="none"`` gives it per code)."""
    return F.cross_entropy(logits, codes, reduction=reduction)


@torch.no_grad()
def nll_bits(prior: nn.Module, codes: torch.Tensor, positions: torch.Tensor | None,
             batch_size: int = 64, previous: torch.Tensor | None = None) -> float:
    """Mean negative log-likelihood of code grids in bits per code (``previous``: the grids of
    the slices below, for a prior conditioned on them)."""
    prior.eval()
    device = next(prior.parameters()).device
    total = 0.0
    for i in range(0, len(codes), batch_size):
        batch = codes[i:i + batch_size].to(device)
        pos = None if positions is None else positions[i:i + batch_size].to(device)
        below = None if previous is None else previous[i:i + batch_size].to(device)
        total += prior.loss(batch, pos, below).item() * len(batch)
    return total / len(codes) / math.log(2)


def unigram_bits(codes: torch.Tensor, num_codes: int) -> float:
    """Entropy in bits of the codes' own frequencies: what a prior blind to context scores."""
    p = torch.bincount(codes.flatten(), minlength=num_codes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())
