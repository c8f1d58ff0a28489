"""Sampling code grids from the gated PixelCNN: a slow reference sampler and a fast cached one.

Both fill the grid in raster order and draw each code by the Gumbel-max trick from the same
random stream (one (B, K) draw per position), so with the same generator, temperature and
top-k they pick identical codes whenever their logits agree.

- ``sample_reference`` re-runs the whole network on the whole grid for every position (what
  the original study and the Keras example do): 1024 full forward passes for a 32x32 grid.
- ``sample_cached`` computes only what each new position needs (Ramachandran et al. 2017,
  "Fast Generation for Convolutional Autoregressive Models"): once a row is complete, the
  vertical stack advances by that one row in every layer; within a row, the horizontal stack
  evaluates one position per layer, reading its last few inputs from per-layer buffers. That
  per-position work runs in NumPy (``_HorizontalStep``), whose calls cost a fraction of torch's
  at these tiny sizes; the random stream is still torch's, drawn one row at a time (the same
  numbers as one draw per position).

``guidance`` g (classifier-free guidance, Ho & Salimans 2022): the prior was trained with the
slice position dropped at random, so it predicts each code both given the position and without
it; sampling from l_uncond + g (l_cond - l_uncond) draws slices that look more like their
position (g = 1 is the plain conditional prior). It costs a second, unconditional batch.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit

from .prior import GatedPixelCNN, gate
from .transformer import CodeTransformer

Progress = Callable[[int, torch.Tensor], None]  # (rows completed, codes so far)


def pick_codes(logits: torch.Tensor, generator: torch.Generator | None,
               temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """logits (B, K) -> codes (B,). temperature 0 is greedy; top_k keeps the k likeliest codes.
    Always consumes one (B, K) uniform draw so both samplers stay in step."""
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
    codes = _gumbel_argmax(logits.detach().cpu().numpy(), uniform.numpy(), temperature, top_k)
    return torch.from_numpy(codes).to(logits.device)


def _gumbel_argmax(logits: np.ndarray, uniform: np.ndarray, temperature: float,
                   top_k: int | None) -> np.ndarray:
    """The pick itself, from given uniforms: both samplers call it (the cached one with a
    row's uniforms drawn at once)."""
    logits = logits.astype(np.float64)
    num_codes = logits.shape[1]
    if top_k is not None and 0 < top_k < num_codes:
        kth = np.partition(logits, num_codes - top_k, axis=1)[:, num_codes - top_k:num_codes - top_k + 1]
        logits = np.where(logits < kth, -np.inf, logits)
    if temperature <= 0:
        return logits.argmax(1)
    gumbel = -np.log(-np.log(np.maximum(uniform, 1e-300)))
    return (logits / temperature + gumbel).argmax(1)


def guided(logits, n: int, guidance: float):
    """(2n, ...) logits, conditional rows first and unconditional after -> (n, ...) guided
    logits; (n, ...) logits are returned as they are (no guidance)."""
    if logits.shape[0] == n:
        return logits
    conditional, unconditional = logits[:n], logits[n:]
    return unconditional + guidance * (conditional - unconditional)


def _guiding(positions, guidance: float) -> bool:
    """Guidance needs a position to guide towards; g = 1 is the plain sampler."""
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    return positions is not None and guidance != 1.0


def _with_unconditional(positions, previous, n: int):
    """Positions and slices below for the doubled batch: the n conditional rows, then the same
    n rows with the position dropped (-1: the prior's "no position" index)."""
    positions = torch.cat([positions, torch.full_like(positions, -1)])
    return positions, None if previous is None else torch.cat([previous, previous])


def _start(prior: GatedPixelCNN, n: int, positions, initial, keep_rows: int):
    size = prior.grid_size
    device = prior.embedding.weight.device
    codes = torch.zeros((n, size, size), dtype=torch.long, device=device)
    if keep_rows:
        if initial is None:
            raise ValueError("completion needs the initial code grid")
        codes[:, :keep_rows] = initial[:, :keep_rows].to(device)
    if positions is not None:
        positions = torch.as_tensor(positions, device=device).long().expand(n).clone()
    return codes, positions


@torch.no_grad()
def sample_reference(prior: GatedPixelCNN, n: int, positions=None, temperature: float = 1.0,
                     top_k: int | None = None, generator: torch.Generator | None = None,
                     initial: torch.Tensor | None = None, keep_rows: int = 0,
                     progress: Progress | None = None, previous: torch.Tensor | None = None,
                     guidance: float = 1.0) -> torch.Tensor:
    """n code grids (n, H, W); rows < keep_rows are copied from ``initial``; ``previous``: the
    slices below (n, H, W), for a prior conditioned on them."""
    prior.eval()
    codes, positions = _start(prior, n, positions, initial, keep_rows)
    guiding = _guiding(positions, guidance)
    if guiding:
        positions, previous = _with_unconditional(positions, previous, n)
    size = prior.grid_size
    for i in range(keep_rows, size):
        for j in range(size):
            both = torch.cat([codes, codes]) if guiding else codes
            logits = guided(prior(both, positions, previous)[:, :, i, j], n, guidance)
            codes[:, i, j] = pick_codes(logits, generator, temperature, top_k)
        if progress:
            progress(i + 1, codes)
    return codes


def sample_cached(prior: GatedPixelCNN, n: int, positions=None, temperature: float = 1.0,
                  top_k: int | None = None, generator: torch.Generator | None = None,
                  initial: torch.Tensor | None = None, keep_rows: int = 0,
                  progress: Progress | None = None, previous: torch.Tensor | None = None,
                  guidance: float = 1.0) -> torch.Tensor:
    """Same contract and same codes as ``sample_reference``, about two orders of magnitude faster."""
    for rows, codes in iter_rows_cached(prior, n, positions, temperature, top_k, generator, initial, keep_rows,
                                        previous, guidance):
        if progress:
            progress(rows, codes)
    return codes


def iter_rows_cached(prior: GatedPixelCNN, n: int, positions=None, temperature: float = 1.0,
                     top_k: int | None = None, generator: torch.Generator | None = None,
                     initial: torch.Tensor | None = None, keep_rows: int = 0,
                     previous: torch.Tensor | None = None, guidance: float = 1.0):
    """The cached sampler as a generator: yields (rows completed, codes so far) after each row
    (for rows < keep_rows, once at the end of the kept part), so a caller can stream progress
    without a thread."""
    # Grad mode is per thread and a generator may be resumed on another thread (Gradio does
    # that), so no_grad is entered around each step, never held across a yield.
    steps = _iter_rows_cached(prior, n, positions, temperature, top_k, generator, initial, keep_rows, previous,
                              guidance)
    while True:
        with torch.no_grad():
            item = next(steps, None)
        if item is None:
            return
        yield item


class _HorizontalStep:
    """The per-position work of the cached sampler in NumPy. It is a few (B, 192) x (192, 128)
    products and gates per layer: at this size the cost is call overhead, not arithmetic,
    and a NumPy call costs about a quarter of a torch one (3.5-4x faster sampling on 2 cores).
    Weights are laid out for windows stored position-major, (B, columns, C), so a window of
    the last few columns is one contiguous block per sample."""

    def __init__(self, prior: GatedPixelCNN):
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        self.first = [layer.first for layer in prior.layers]
        self.width = [layer.h_width for layer in prior.layers]
        # h_conv (2C, C, 1, w) -> (w*C, 2C) acting on a flattened (w, C) window
        self.w_h = [array(l.h_conv.weight[:, :, 0].permute(2, 1, 0).reshape(-1, l.h_conv.out_channels))
                    for l in prior.layers]
        # h_out and skip read the same gated units: one product for both
        self.w_out = [array(torch.cat([l.h_out.weight, l.skip.weight])[:, :, 0, 0].t()) for l in prior.layers]
        self.b_out = [array(torch.cat([l.h_out.bias, l.skip.bias])) for l in prior.layers]
        head = prior.head
        self.head = [array(head[1].weight[:, :, 0, 0].t()), array(head[1].bias),
                     array(head[3].weight[:, :, 0, 0].t()), array(head[3].bias)]
        self.embedding = array(prior.embedding.weight)
        # attention blocks (PixelSNAIL): layer index -> weights; keys and values are cached per
        # grid position in ``self.keys`` / ``self.values`` (B, heads, H*W, C/heads)
        # "scale" is a Python float: NumPy 2 promotes float32 * np.float64 to float64, and a float64
        # weights @ float32 values product copied the whole value cache every step
        self.attention = {int(l): {"heads": a.heads, "eps": a.norm.eps, "gamma": array(a.norm.weight),
                                   "scale": 1.0 / math.sqrt(a.out.out_features // a.heads),
                                   "beta": array(a.norm.bias), "position": array(a.position),
                                   "w_qkv": array(a.qkv.weight.t()), "b_qkv": array(a.qkv.bias),
                                   "w_out": array(a.out.weight.t()), "b_out": array(a.out.bias)}
                          for l, a in prior.attention.items()}
        self.keys, self.values = {}, {}

    def start_attention(self, n: int, positions: int, kept: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        """Empty key/value caches for ``positions`` grid positions; ``kept``: layer -> (k, v) of
        the kept rows' positions (completion), computed by a forward pass."""
        for l, a in self.attention.items():
            shape = (n, a["heads"], positions, self.embedding.shape[1] // a["heads"])
            self.keys[l], self.values[l] = (np.zeros(shape, self.embedding.dtype),
                                                np.zeros(shape, self.embedding.dtype))
            if l in kept:
                k, v = (t.cpu().numpy() for t in kept[l])
                self.keys[l][:, :, :k.shape[2]], self.values[l][:, :, :v.shape[2]] = k, v

    def attend(self, l: int, x: np.ndarray, index: int) -> np.ndarray:
        """The attention block after layer l at grid position ``index``: x (B, C) -> x + output,
        with this position's key and value added to the cache first (it may see itself)."""
        a, n = self.attention[l], x.shape[0]
        centred = x - x.mean(1, keepdims=True)
        normed = centred / np.sqrt((centred ** 2).mean(1, keepdims=True) + a["eps"]) * a["gamma"] + a["beta"]
        q, k, v = np.split((normed + a["position"][index]) @ a["w_qkv"] + a["b_qkv"], 3, axis=1)
        heads = a["heads"]
        self.keys[l][:, :, index], self.values[l][:, :, index] = k.reshape(n, heads, -1), v.reshape(n, heads, -1)
        q = q.reshape(n, heads, 1, -1) * a["scale"]
        scores = q @ self.keys[l][:, :, :index + 1].transpose(0, 1, 3, 2)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        mixed = (weights / weights.sum(-1, keepdims=True)) @ self.values[l][:, :, :index + 1]
        return x + mixed.reshape(n, -1) @ a["w_out"] + a["b_out"]

    def row(self, h_inputs: list[np.ndarray], v_from_above: list[np.ndarray], pad: int,
            uniforms: np.ndarray, temperature: float, top_k: int | None, row_index: int = 0,
            guidance: float = 1.0) -> np.ndarray:
        """Sample row ``row_index`` left to right; -> codes (B, W). h_inputs[l]: (B, pad + W, C), zeroed.
        With guidance the batch is doubled (conditional, then unconditional rows; ``uniforms``
        covers the first half) and both halves are given the same picks."""
        n, size = v_from_above[0].shape[:2]
        channels = self.embedding.shape[1]
        layers = len(self.w_h)
        codes = np.empty((n, size), dtype=np.int64)
        for j in range(size):
            skips = 0
            for l in range(layers):
                w = self.width[l]
                left = pad + j - w if self.first[l] else pad + j - w + 1  # first layer: columns < j
                pre = h_inputs[l][:, left:left + w].reshape(n, -1) @ self.w_h[l] + v_from_above[l][:, j]
                gated = np.tanh(pre[:, :channels]) * expit(pre[:, channels:])
                out_skip = gated @ self.w_out[l] + self.b_out[l]
                skips = skips + out_skip[:, channels:]
                if l + 1 < layers:
                    out = out_skip[:, :channels]
                    out = out if self.first[l] else out + h_inputs[l][:, pad + j]
                    h_inputs[l + 1][:, pad + j] = self.attend(l, out, row_index * size + j) if l in self.attention else out
            hidden = np.maximum(skips, 0) @ self.head[0] + self.head[1]
            logits = np.maximum(hidden, 0) @ self.head[2] + self.head[3]
            picked = _gumbel_argmax(guided(logits, uniforms.shape[1], guidance), uniforms[j], temperature, top_k)
            codes[:, j] = picked if len(picked) == n else np.tile(picked, 2)
            h_inputs[0][:, pad + j] = self.embedding[codes[:, j]]
        return codes


def _kept_keys_values(prior, codes, positions, keep_rows, previous) -> dict:
    """Completion with attention: the kept rows' keys and values, layer -> (k, v) (B, heads,
    keep_rows * W, C/heads), from one forward pass (each depends only on codes before it, so the
    rows still to draw, zeros here, do not enter)."""
    if not keep_rows or not len(prior.attention):
        return {}
    kept, hooks = {}, []
    for l, block in prior.attention.items():
        def keep(module, inputs, output, l=int(l)):
            _, k, v = module.queries_keys_values(inputs[0])
            kept[l] = (k[:, :, :keep_rows * prior.grid_size], v[:, :, :keep_rows * prior.grid_size])
        hooks.append(block.register_forward_hook(keep))
    try:
        prior(codes, positions, previous)
    finally:
        for hook in hooks:
            hook.remove()
    return kept


def _iter_rows_transformer(prior: CodeTransformer, n, positions, temperature, top_k, generator, initial,
                           keep_rows):
    """The transformer's cached sampler: one position per step, every block's keys and values
    kept (``CodeTransformer.step``); kept rows are fed through the same steps."""
    prior.eval()
    codes, positions = _start(prior, n, positions, initial, keep_rows)
    size = prior.grid_size
    caches, logits = prior.start(positions, n)
    for i in range(size):
        if i >= keep_rows:
            uniforms = torch.rand((size, n, prior.num_codes), generator=generator, dtype=torch.float64).numpy()
        for j in range(size):
            if i >= keep_rows:
                picked = _gumbel_argmax(logits.double().cpu().numpy(), uniforms[j], temperature, top_k)
                codes[:, i, j] = torch.from_numpy(picked).to(codes.device)
            if i * size + j + 1 < size * size:
                logits = prior.step(codes[:, i, j], i * size + j + 1, caches)
        if i + 1 >= keep_rows:
            yield i + 1, codes


def _iter_rows_cached(prior, n, positions, temperature, top_k, generator, initial, keep_rows, previous=None,
                      guidance: float = 1.0):
    if isinstance(prior, CodeTransformer):
        if previous is not None:
            raise ValueError("the transformer prior is not conditioned on the slice below")
        if positions is not None and guidance != 1.0:
            raise ValueError("guidance needs a prior trained with the position dropped; the transformer is not")
        yield from _iter_rows_transformer(prior, n, positions, temperature, top_k, generator, initial, keep_rows)
        return
    prior.eval()
    wanted = n
    codes, positions = _start(prior, n, positions, initial, keep_rows)
    if _guiding(positions, guidance):  # the cached state runs on 2n rows; the first n are returned
        positions, previous = _with_unconditional(positions, previous, n)
        codes, n = torch.cat([codes, codes]), 2 * n
    size, layers = prior.grid_size, prior.layers
    channels = prior.embedding.embedding_dim
    condition = prior.conditions(positions, n)
    param = prior.embedding.weight
    step = _HorizontalStep(prior)
    step.start_attention(n, size * size, _kept_keys_values(prior, codes, positions, keep_rows, previous))
    # v_inputs[l]: layer l's vertical input, the whole grid (rows fill in as they complete).
    # h_inputs[l]: layer l's horizontal input for the current row only, position-major, with
    # the left zero padding of the horizontal convolution in place (columns shifted by ``pad``).
    pad = max(layer.h_width for layer in layers)
    v_inputs = [torch.zeros((n, channels, size, size), dtype=param.dtype, device=param.device)
                for _ in range(len(layers))]
    h_inputs = [np.zeros((n, size + pad, channels), dtype=step.embedding.dtype) for _ in range(len(layers))]
    v_from_above = [None] * len(layers)
    biases = [layer.condition(condition).chunk(2, dim=1) for layer in layers]
    previous_map = prior.previous_map(previous)
    # (1 or B, 2C, H, W) for v and h, or 0s: the location map and the slice below
    where = [layer.spatial_bias(prior.coordinate_map, previous_map) for layer in layers]

    def where_h(l, row):  # the horizontal gates' spatial bias along one row: (1 or B, W, 2C) or 0
        return where[l][1][:, :, row].transpose(1, 2) if torch.is_tensor(where[l][1]) else 0

    def where_v(l, row):  # the vertical gates' along one row: (1 or B, 2C, W) or 0
        return where[l][0][:, :, row] if torch.is_tensor(where[l][0]) else 0

    def embed_row(i):
        v_inputs[0][:, :, i] = prior.embedding(codes[:, i]).transpose(1, 2)

    def advance_vertical(row):
        """Run every layer's vertical stack on one completed row."""
        for l, layer in enumerate(layers):
            top = row - layer.v_height + 1
            window = v_inputs[l][:, :, max(top, 0):row + 1]
            window = F.pad(window, (layer.v_width // 2, layer.v_width // 2, max(-top, 0), 0))
            v_pre = layer.v_conv(window)[:, :, 0]  # (B, 2C, W)
            # The horizontal stack of the next row sees this row through v_to_h; its other
            # per-row constants (the conv bias, the condition) are folded in here once.
            v_to_h = layer.v_to_h.weight[:, :, 0, 0]
            v_from_above[l] = (torch.einsum("oc,bcw->bwo", v_to_h, v_pre) + layer.v_to_h.bias
                               + (layer.h_conv.bias + biases[l][1])[:, None]
                               + where_h(l, row + 1)).cpu().numpy()
            if l + 1 < len(layers):
                v_inputs[l + 1][:, :, row] = gate(v_pre + biases[l][0][:, :, None] + where_v(l, row))

    for l, layer in enumerate(layers):  # row 0 sees nothing above: v_to_h of zeros is its bias
        constant = (layer.v_to_h.bias + layer.h_conv.bias + biases[l][1])[:, None] + where_h(l, 0)
        v_from_above[l] = constant.expand(n, size, -1).cpu().numpy()
    for i in range(size):
        if i > 0:
            advance_vertical(i - 1)
        if i < keep_rows:
            embed_row(i)
            if i + 1 == keep_rows:
                yield keep_rows, codes[:wanted]
            continue
        for h in h_inputs:
            h.fill(0)
        # One draw for the row is the same stream as one (B, K) draw per position.
        uniforms = torch.rand((size, wanted, prior.num_codes), generator=generator, dtype=torch.float64)
        row = step.row(h_inputs, v_from_above, pad, uniforms.numpy(), temperature, top_k, i, guidance)
        codes[:, i] = torch.from_numpy(row).to(codes.device)
        embed_row(i)
        yield i + 1, codes[:wanted]


SAMPLERS = {"cached": sample_cached, "reference": sample_reference}


@torch.no_grad()
def teacher_forced_picks(prior: GatedPixelCNN, codes: torch.Tensor, positions=None, temperature: float = 1.0,
                         top_k: int | None = None, seed: int = 0, keep_rows: int = 0,
                         previous: torch.Tensor | None = None, guidance: float = 1.0):
    """What ``sample_reference`` with ``torch.Generator().manual_seed(seed)`` picks at every
    position when the codes before it are ``codes``: one forward pass gives every position's
    logits (they depend only on earlier codes), and the random stream is drawn as the samplers
    draw it. Returns (picks (n, H, W), margin (n, H, W): the gap between the best and second-best
    perturbed score of each pick, small where a tiny logit difference could flip it).

    If ``picks`` equals ``codes`` everywhere from row ``keep_rows`` on, the reference sampler run
    with that seed returns exactly ``codes`` (by induction over positions): an exact check of a
    faster sampler at the cost of one forward pass."""
    prior.eval()
    n, size = codes.shape[0], prior.grid_size
    _, positions = _start(prior, n, positions, None, 0)
    if _guiding(positions, guidance):
        positions, previous = _with_unconditional(positions, previous, n)
        codes_in = torch.cat([codes, codes])
    else:
        codes_in = codes
    logits = guided(prior(codes_in, positions, previous), n, guidance).double().cpu().numpy()  # (n, K, H, W)
    generator = torch.Generator().manual_seed(seed)
    picks, margin = codes.clone().cpu(), torch.full(codes.shape, float("inf"), dtype=torch.float64)
    for i in range(keep_rows, size):
        uniforms = torch.rand((size, n, prior.num_codes), generator=generator, dtype=torch.float64).numpy()
        for j in range(size):
            row_logits = logits[:, :, i, j]
            picks[:, i, j] = torch.from_numpy(_gumbel_argmax(row_logits, uniforms[j], temperature, top_k))
            if temperature > 0:
                scores = row_logits / temperature - np.log(-np.log(np.maximum(uniforms[j], 1e-300)))
                if top_k is not None and 0 < top_k < prior.num_codes:
                    kth = np.partition(row_logits, -top_k, axis=1)[:, -top_k][:, None]
                    scores = np.where(row_logits < kth, -np.inf, scores)
                top2 = np.sort(scores, axis=1)[:, -2:]
                margin[:, i, j] = torch.from_numpy(top2[:, 1] - top2[:, 0])
    return picks, margin


def sample_codes(prior: GatedPixelCNN, n: int, position: int | torch.Tensor | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                 sampler: str = "cached", batch_size: int | None = None,
                 previous: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
    """n code grids from a seed. ``position``: one slice position for all, one per sample (n,),
    or None (unconditional). With ``batch_size`` they are drawn in batches of that size, batch
    b from seed + b (bounded memory for many samples)."""
    positions = None if position is None else torch.as_tensor(position).long().expand(n)
    size = batch_size or n
    grids = []
    for b, start in enumerate(range(0, n, size)):
        chunk = None if positions is None else positions[start:start + size]
        below = None if previous is None else previous[start:start + size]
        count = min(size, n - start)
        grids.append(SAMPLERS[sampler](prior, count, positions=chunk, temperature=temperature, top_k=top_k,
                                       generator=torch.Generator().manual_seed(seed + b), previous=below,
                                       guidance=guidance))
    return torch.cat(grids)


def iter_volume(prior: GatedPixelCNN, volume_prior: GatedPixelCNN, n: int, slices: int | None = None,
                temperature: float = 1.0, top_k: int | None = None, seed: int = 0):
    """Sample n coherent volumes slice by slice, bottom up: slice 0 from the ordinary prior at
    position 0, slice k from the volume prior at position k given slice k - 1. Yields (k, code
    grids of slice k (n, H, W)) as each slice completes; one random stream for the whole volume."""
    if not volume_prior.previous_slice:
        raise ValueError("the volume prior is not conditioned on the slice below (previous_slice = 0)")
    slices = slices or volume_prior.num_positions
    generator = torch.Generator().manual_seed(seed)
    below = None
    for k in range(slices):
        model = prior if k == 0 else volume_prior
        below = sample_cached(model, n, positions=torch.full((n,), k), temperature=temperature, top_k=top_k,
                              generator=generator, previous=below)
        yield k, below


def sample_volume(prior, volume_prior, n: int, slices: int | None = None, temperature: float = 1.0,
                  top_k: int | None = None, seed: int = 0) -> torch.Tensor:
    """-> code grids (n, slices, H, W) of n volumes (see ``iter_volume``)."""
    grids = [codes for _, codes in iter_volume(prior, volume_prior, n, slices, temperature, top_k, seed)]
    return torch.stack(grids, dim=1)
