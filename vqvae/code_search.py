"""Encoder-side code search: codes that decode better, through the same decoder, at the same bit rate.

``VQVAE.encode`` gives each position the codebook vector nearest the encoder's output: the least
error in latent space, which is not the least error in the decoded slice. Video coders met the
same gap and search the choices their bit stream allows for the one that decodes best
(rate-distortion optimised quantisation; Sullivan and Wiegand 1998, "Rate-distortion
optimization for video compression"). Here the choices are the ``candidates`` codebook vectors
nearest the encoder's output at each position, and the judge is what the project reports,
SSIM against the input:

- positions are visited in ``stride`` x ``stride`` interleaved groups: members of one group lie
  ``stride`` cells apart, so one decode tries a candidate at every member at once, and each
  member is judged by the SSIM map over its own cell and the 8 around it (the pixels its code
  moves most), windows that members of a group do not share;
- a member keeps the candidate that raises its window's SSIM most, if any does;
- a sweep visits every group once; after each sweep a slice whose whole-image SSIM through the
  whole decoder fell (codes of a group still reach beyond their windows a little, and the judge
  below is not the whole decoder) keeps its codes from before the sweep, so searching never
  lowers a slice's SSIM.

The result is a grid of the same codebook, so everything downstream reads it; ``encode`` stays
nearest-neighbour, the codes the priors were trained on (and the codes the faithful and the
realistic decoders share). Cost: each sweep decodes every slice ``stride**2 * candidates``
times, so candidates are judged by the decoder without its texture head (``texture=False``,
about a seventh of a wide head's cost): the head adds fine detail on top of what the codes
fix, and codes chosen without it decode as well through the whole decoder (on 24 validate
slices, faithful decoder with a 32-channel head: SSIM 0.9443 nearest, 0.9509 searched without
the head, 0.9510 searched with it; ``texture_judge=True`` uses the whole decoder).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import SSIM_WINDOW, _ssim_terms, ssim_torch
from .model import VQVAE


def ranked_codes(model: VQVAE, images: torch.Tensor, candidates: int) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, h, w, candidates): at each position the codes nearest the
    encoder's output, nearest first (so ``[..., 0]`` is ``encode``)."""
    z = model.encoder(images)
    b, d, h, w = z.shape
    distances = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, d).float(), model.quantizer.codebook.float())
    return distances.topk(candidates, largest=False).indices.view(b, h, w, candidates)


def window_ssim(reconstruction: torch.Tensor, images: torch.Tensor, cell: int) -> torch.Tensor:
    """(B, h, w): mean of the SSIM map over each position's cell and its 8 neighbours (pixels within
    half a window of the border, which scikit-image's mean leaves out, count as 0 for every
    candidate alike)."""
    luminance, contrast_structure = _ssim_terms(reconstruction, images, SSIM_WINDOW, 0.01, 0.03)
    pad = SSIM_WINDOW // 2
    ssim_map = F.pad(luminance * contrast_structure, (pad, pad, pad, pad))
    per_cell = F.avg_pool2d(ssim_map, cell)
    return F.avg_pool2d(per_cell, 3, stride=1, padding=1, count_include_pad=False)[:, 0]


def _decode(model: VQVAE, codes: torch.Tensor, texture: bool) -> torch.Tensor:
    # decode's clamp, unrounded: the search compares candidates, the report rounds to uint8
    return model.decoder(model.quantizer.lookup(codes), texture=texture).clamp(0.0, 1.0).float()


def _scores(model: VQVAE, grids: list, images: torch.Tensor, texture: bool, batch: int = 32) -> list:
    """Window SSIM of each code grid in ``grids``, several grids to one decode (a single slice's
    decode leaves cores idle; up to ``batch`` slices at once bounds the memory)."""
    per_decode, scores = max(1, batch // len(images)), []
    for start in range(0, len(grids), per_decode):
        chunk = grids[start:start + per_decode]
        decoded = _decode(model, torch.cat(chunk), texture)
        scores += window_ssim(decoded, images.repeat(len(chunk), 1, 1, 1), model.downsample).split(len(images))
    return scores


@torch.no_grad()
def search_batch(model: VQVAE, images: torch.Tensor, candidates: int = 8, sweeps: int = 2,
                 stride: int = 3, texture_judge: bool = False) -> torch.Tensor:
    """(B, 1, H, W) slices in [0, 1] -> (B, h, w) codes whose decoded SSIM is at least
    ``encode``'s (see the module's docstring)."""
    ranked = ranked_codes(model, images, candidates)
    codes = ranked[..., 0].clone()
    if candidates < 2 or sweeps < 1:
        return codes
    h, w = codes.shape[1:]
    whole = ssim_torch(_decode(model, codes, True), images)  # the whole decoder: what is shown
    for _ in range(sweeps):
        before = codes.clone()
        for row in range(stride):
            for column in range(stride):
                members = torch.zeros(h, w, dtype=torch.bool, device=codes.device)
                members[row::stride, column::stride] = True
                trials = [trial for trial in (torch.where(members, ranked[..., rank], codes)
                                              for rank in range(candidates)) if not torch.equal(trial, codes)]
                best, *scores = _scores(model, [codes, *trials], images, texture_judge)
                chosen = codes.clone()
                for trial, score in zip(trials, scores):
                    better = members & (score > best)
                    best = torch.where(better, score, best)
                    chosen = torch.where(better, trial, chosen)
                codes = chosen
        after = ssim_torch(_decode(model, codes, True), images)
        worse = after < whole
        codes[worse] = before[worse]
        whole = torch.where(worse, whole, after)
        if torch.equal(codes, before):
            break
    return codes

