"""A small causal transformer prior over VQ-VAE code grids: the grid read in raster order as a
sequence of codes, every code attending to all codes before it (taming-transformers, Esser et
al. 2021; written small in the manner of nanoGPT).

The sequence starts with a token that carries the slice position k (or "no position",
``num_positions``, trained by dropping the condition as the PixelCNN is), so the first code is
predicted from the position alone and code t from the position and codes 0..t-1. Same interface
as ``GatedPixelCNN``: ``forward(codes, positions)`` gives logits (B, K, H, W), ``loss`` the mean
negative log-likelihood, so training, the NLL, the surprise map and teacher forcing are shared.
Sampling keeps every layer's keys and values (``start`` / ``step``: one position per call); see
``vqvae/sampling.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .prior import code_nll, condition_indices


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x MLP, each a residual."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads ({heads}) must divide the channels ({channels})")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.qkv, self.proj = nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, heads, T, C/heads)
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """x (B, T, C). With ``cache`` (sampling, T = 1): this position's key and value are
        appended to the cache's and it attends to all of them."""
        q, k, v = (self.split_heads(t) for t in self.qkv(self.norm1(x)).chunk(3, -1))
        if cache is None:
            mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            cache["k"] = k if cache.get("k") is None else torch.cat([cache["k"], k], 2)
            cache["v"] = v if cache.get("v") is None else torch.cat([cache["v"], v], 2)
            mixed = F.scaled_dot_product_attention(q, cache["k"], cache["v"])  # all earlier: no mask
        x = x + self.proj(mixed.transpose(1, 2).reshape(x.shape))
        return x + self.mlp(self.norm2(x))


class CodeTransformer(nn.Module, PyTorchModelHubMixin, library_name="brainvq",
                      tags=["transformer", "brain-mri", "oasis"], license="mit"):
    def __init__(self, num_codes: int = 512, channels: int = 128, layers: int = 4, heads: int = 4,
                 num_positions: int = 32, grid_size: int = 32):
        super().__init__()
        self.num_codes, self.num_positions, self.grid_size = num_codes, num_positions, grid_size
        self.no_position = num_positions
        self.previous_slice = 0  # not a volume prior
        self.embedding = nn.Embedding(num_codes, channels)
        self.start_token = nn.Embedding(num_positions + 1, channels)  # the slice position (or none)
        self.position = nn.Parameter(0.02 * torch.randn(grid_size * grid_size, channels))
        self.blocks = nn.ModuleList(Block(channels, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, num_codes)

    def conditions(self, positions: torch.Tensor | None, batch: int) -> torch.Tensor:
        return condition_indices(positions, batch, self.no_position, self.position.device)

    def forward(self, codes: torch.Tensor, positions: torch.Tensor | None = None,
                previous: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, H, W) -> logits (B, K, H, W); position t is predicted from codes < t."""
        if previous is not None:
            raise ValueError("the transformer prior is not conditioned on the slice below")
        b, height, width = codes.shape
        start = self.start_token(self.conditions(positions, b))[:, None]
        x = torch.cat([start, self.embedding(codes.flatten(1)[:, :-1])], 1) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)).transpose(1, 2).reshape(b, -1, height, width)

    def loss(self, codes, positions=None, previous=None) -> torch.Tensor:
        """Mean negative log-likelihood in nats per code."""
        return code_nll(self(codes, positions, previous), codes)

    def start(self, positions: torch.Tensor | None, batch: int) -> tuple[list[dict], torch.Tensor]:
        """Begin incremental decoding: -> (per-block caches, logits (B, K) of position 0)."""
        caches = [{} for _ in self.blocks]
        return caches, self._step(self.start_token(self.conditions(positions, batch)), 0, caches)

    def step(self, codes: torch.Tensor, index: int, caches: list[dict]) -> torch.Tensor:
        """Feed the code just placed at position ``index`` - 1 (B,); -> logits (B, K) of ``index``."""
        return self._step(self.embedding(codes), index, caches)

    def _step(self, x: torch.Tensor, index: int, caches: list[dict]) -> torch.Tensor:
        x = (x + self.position[index])[:, None]
        for block, cache in zip(self.blocks, caches):
            x = block(x, cache)
        return self.head(self.norm(x[:, 0]))
