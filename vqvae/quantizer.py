"""Vector quantiser with an EMA codebook that does not collapse.

Three tricks, each a flag with a safe default:
- EMA codebook updates instead of a codebook loss (van den Oord et al. 2017, appendix;
  "Neural Discrete Representation Learning"), with Laplace smoothing of the counts.
- Data-dependent initialisation: the codebook starts as randomly chosen encoder outputs
  of the first training batch, so every code begins inside the data.
- Dead-code restart: a code whose EMA count falls below ``dead_threshold`` is moved onto an
  encoder output of the current batch (Dhariwal et al. 2020, "Jukebox", sec. 2.3). With
  ``restart_by_error`` the output is drawn with probability proportional to its squared
  quantisation error, as k-means++ seeds (Arthur & Vassilvitskii 2007): half of every MRI slice
  is identical black background, and uniform draws would keep restarting codes on top of it.

Distances and EMA statistics are always computed in fp32, also under bf16 autocast: in
bf16 nearby codes become indistinguishable and the running averages lose their small updates.
Under torch.distributed the statistics are summed over ranks and initialisation/restarts come
from rank 0, so every rank holds the same codebook.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int = 512, code_dim: int = 64, decay: float = 0.99,
                 commitment: float = 0.25, epsilon: float = 1e-5, data_init: bool = True,
                 dead_threshold: float = 1.0, restart_by_error: bool = True):
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.decay, self.commitment, self.epsilon = decay, commitment, epsilon
        self.dead_threshold, self.restart_by_error = dead_threshold, restart_by_error
        codebook = torch.randn(num_codes, code_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", codebook.clone())
        self.register_buffer("initialised", torch.tensor(not data_init))
        # the codebook learns by moving average, not by gradient: requires_grad_(False) cannot stop it,
        # this does (a fine-tune of the encoder or the decoder alone keeps the codebook as it is)
        self.frozen = False

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (N, D), in fp32."""
        return self._nearest_with_error(flat)[0]

    def _nearest_with_error(self, flat: torch.Tensor):
        flat = flat.float()
        codebook = self.codebook.float()
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2; |x|^2 is the same for every code, added back after.
        distances = codebook.pow(2).sum(1) - 2.0 * flat @ codebook.t()
        best, indices = distances.min(1)
        return indices, (best + flat.pow(2).sum(1)).clamp_min(0)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (B, H, W) -> latents (B, D, H, W)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        """z (B, D, H, W) -> (quantised z with straight-through gradient, commitment loss, codes)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            b, d, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)
            learning = self.training and not self.frozen
            if learning and not bool(self.initialised):
                self._initialise(flat)
            indices, errors = self._nearest_with_error(flat)
            if learning:
                self._ema_update(flat, indices, errors)
            quantised = self.lookup(indices.view(b, h, w))
            loss = self.commitment * F.mse_loss(z, quantised.detach())
            quantised = z + (quantised - z).detach()  # straight-through estimator
        return quantised, loss, indices.view(b, h, w)

    def _random_rows(self, flat: torch.Tensor, n: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        if weights is not None and int((weights > 0).sum()) >= n:
            # without replacement: with replacement, the few worst-served vectors would be
            # drawn many times and restart a crowd of identical codes of which only one survives
            picks = torch.multinomial(weights, n, replacement=False)
        else:
            picks = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        rows = flat[picks].clone()
        if _distributed():
            dist.broadcast(rows, src=0)
        return rows

    @torch.no_grad()
    def _initialise(self, flat: torch.Tensor):
        rows = self._random_rows(flat, self.num_codes)
        self.codebook.copy_(rows)
        self.ema_sum.copy_(rows)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, errors: torch.Tensor):
        counts = torch.bincount(indices, minlength=self.num_codes).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        if self.dead_threshold > 0:
            self._restart_dead(flat, errors if self.restart_by_error else None)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, errors: torch.Tensor | None):
        dead = self.ema_count < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        rows = self._random_rows(flat, n_dead, errors)
        self.codebook[dead] = rows
        self.ema_sum[dead] = rows * self.dead_threshold
        self.ema_count[dead] = self.dead_threshold
