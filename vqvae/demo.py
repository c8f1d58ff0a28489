"""The functions behind the Gradio app (app.py only builds the page around them): slices become
reconstructions with metrics and code maps, and the prior's samples stream out row by row.
Uploads are read by ``vqvae/upload.py``. Every user mistake raises ``InputError`` with a
message meant for the user; the app shows it and keeps serving.
"""
from __future__ import annotations

import numpy as np
import torch

from .code_search import search_batch
from .hub import Models
from .images import error_map, slice_tensor, to_uint8, to_unit
from .metrics import image_metrics
from .model import VQVAE
from .sampling import iter_rows_cached, iter_volume
from .surprise import heat_map, regional_surprise, surprise_and_expected
from .upload import InputError, NiftiVolume, fit_to_square

MAX_SAMPLES = 16
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


# -- checking what a user typed ----------------------------------------------------------------

def whole_number(value, name: str, low: int, high: int) -> int:
    """A form field as an int in [low, high], or an InputError naming the field."""
    if value is None or value == "":
        raise InputError(f"{name} is empty; give a whole number from {low} to {high}")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)  # exact: a float cannot hold every 64-bit seed
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        try:
            real = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a whole number, got {value!r}") from None
        if not np.isfinite(real) or real != int(real):
            raise InputError(f"{name} must be a whole number, got {value!r}")
        number = int(real)
    if not low <= number <= high:
        raise InputError(f"{name} must be from {low} to {high}, got {number}")
    return number


def real_number(value, name: str, low: float, high: float) -> float:
    if value is None or value == "":
        raise InputError(f"{name} is empty; give a number from {low} to {high}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not (np.isfinite(number) and low <= number <= high):
        raise InputError(f"{name} must be from {low} to {high}, got {value!r}")
    return number


# -- reconstruction and the code map ---------------------------------------------------------

@torch.no_grad()
def reconstruct_slice(vqvae: VQVAE, image: np.ndarray, codes: np.ndarray | None = None,
                      search: bool = False) -> dict:
    """-> reconstruction and error map (uint8), the code grid it decodes ("codes"), the encoder's
    nearest codes ("encoded", the ones the prior was trained on; None when ``codes`` is given),
    and SSIM / in-brain SSIM / PSNR.
    ``codes``: the slice's code grid, already chosen (another decoder on the same codes);
    ``search``: codes searched for the decoded SSIM (``vqvae/code_search.py``, ~2.2 s a slice on 2 cores)."""
    x = slice_tensor(image)
    encoded = None
    if codes is not None:
        codes = torch.from_numpy(np.asarray(codes)).long()[None]
    else:
        encoded = vqvae.encode(x)
        codes = search_batch(vqvae, x) if search else encoded
    rebuilt = vqvae.decode(codes)[0, 0].numpy()
    metrics = image_metrics(to_unit(image), rebuilt)
    rebuilt = to_uint8(rebuilt)
    return {"reconstruction": rebuilt, "error": error_map(image, rebuilt), "codes": codes[0].numpy(),
            "encoded": None if encoded is None else encoded[0].numpy(), "metrics": metrics}


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    h6 = (hue % 1.0) * 6
    rgb = np.stack([np.clip(np.abs(h6 - 3) - 1, 0, 1), np.clip(2 - np.abs(h6 - 2), 0, 1),
                    np.clip(2 - np.abs(h6 - 4), 0, 1)], axis=-1)
    return (1 - saturation[..., None] + saturation[..., None] * rgb) * value[..., None]


@torch.no_grad()
def code_colours(vqvae: VQVAE, patch: int = 4) -> np.ndarray:
    """A colour per code that says what it looks like, uint8 (K, 3): brightness is the code's
    mean decoded intensity (so the code map shows the anatomy), hue is its direction in the
    codebook's first two principal components (so neighbouring codes still differ)."""
    codes = torch.arange(vqvae.num_codes)[:, None, None].expand(-1, patch, patch)
    intensity = vqvae.decode(codes).mean(dim=(1, 2, 3)).numpy()
    book = vqvae.quantizer.codebook.double().numpy()
    centred = book - book.mean(0)
    components = np.linalg.svd(centred, full_matrices=False)[2][:2]
    pc = centred @ components.T
    hue = (np.arctan2(pc[:, 1], pc[:, 0]) / (2 * np.pi)) % 1.0
    value = 0.12 + 0.88 * (intensity - intensity.min()) / max(np.ptp(intensity), 1e-6)
    return to_uint8(_hsv_to_rgb(hue, np.full_like(hue, 0.55), value))


def code_map(codes: np.ndarray, colours: np.ndarray, image: np.ndarray | None = None,
             opacity: float = 1.0) -> np.ndarray:
    """The code grid in ``colours``, enlarged (nearest) to the slice's size, uint8 RGB; with
    ``image`` and ``opacity`` < 1 laid over the slice."""
    size = image.shape[0] if image is not None else 256
    scale = size // codes.shape[0]
    coloured = np.repeat(np.repeat(colours[codes], scale, axis=0), scale, axis=1).astype(np.float32)
    if image is not None and opacity < 1:
        coloured = opacity * coloured + (1 - opacity) * np.repeat(image[..., None], 3, axis=2)
    return np.round(coloured).astype(np.uint8)


def code_at(codes: np.ndarray, x: int, y: int, size: int = 256) -> int:
    """The code under pixel (x, y) of a size x size view of the grid."""
    scale = size / codes.shape[0]
    row = int(np.clip(y // scale, 0, codes.shape[0] - 1))
    column = int(np.clip(x // scale, 0, codes.shape[1] - 1))
    return int(codes[row, column])


def most_used_code(codes: np.ndarray) -> int:
    return int(np.bincount(codes.ravel()).argmax())


def code_usage(codes: np.ndarray, train_frequencies: np.ndarray | None, top: int = 20) -> list[dict]:
    """The slice's most used codes: their share in this slice beside their share in training."""
    counts = np.bincount(codes.ravel(), minlength=len(train_frequencies) if train_frequencies is not None else 0)
    order = np.argsort(-counts, kind="stable")[:top]
    rows = []
    for code in order:
        if counts[code] == 0:
            break
        rows.append({"code": str(code), "source": "this slice", "share": counts[code] / codes.size})
        if train_frequencies is not None:
            rows.append({"code": str(code), "source": "training set",
                         "share": float(train_frequencies[code] / train_frequencies.sum())})
    return rows


def highlight_code(image: np.ndarray, codes: np.ndarray, code: int) -> np.ndarray:
    """The slice in grey with the cells that use ``code`` tinted red, uint8 RGB."""
    scale = image.shape[0] // codes.shape[0]
    mask = np.repeat(np.repeat(codes == code, scale, axis=0), scale, axis=1)
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array([255, 40, 40])
    return rgb.astype(np.uint8)


@torch.no_grad()
def decode_code(vqvae: VQVAE, code, grid: int) -> np.ndarray:
    """What one code decodes to alone: a grid filled with it, decoded, uint8."""
    code = whole_number(code, "code", 0, vqvae.num_codes - 1)
    return to_uint8(vqvae.decode(torch.full((1, grid, grid), code))[0, 0])


# -- sampling ------------------------------------------------------------------------------

def partial_decode(vqvae: VQVAE, codes: torch.Tensor, rows_done: int) -> list[np.ndarray]:
    """Decode code grids of which only the first ``rows_done`` rows are final; the rest is
    shown black. Unfinished grids are drafts (``VQVAE.decode(draft=True)``): the realistic
    decoder's detail head costs several times the rest of the decoder and is drawn once, at the end."""
    images = to_uint8(vqvae.decode(codes, draft=rows_done < codes.shape[1])[:, 0])
    images[:, rows_done * vqvae.downsample:] = 0
    return list(images)


DECODERS = ("realistic", "faithful")


def decoder(models: Models, name: str | None) -> VQVAE:
    """The VQ-VAE whose decoder draws: "realistic" (the adversarially trained one, where the
    weights have it; else the faithful one) or "faithful". Both decode the same codes."""
    if name not in (None, *DECODERS):
        raise InputError(f"decoder must be one of {', '.join(DECODERS)}, got {name!r}")
    return models.realistic if name in (None, "realistic") and models.realistic is not None else models.vqvae


def sample_stream(models: Models, n, temperature=1.0, top_k=0, seed=0, position=None,
                  initial: np.ndarray | None = None, keep_rows=0, every: int = 8, decoder_name: str | None = None,
                  guidance=1.0):
    """Yield (images, rows done, rows total) while the cached sampler fills the grids, every
    ``every`` rows and at the end. ``initial`` + ``keep_rows`` gives completion of a real slice;
    ``guidance`` > 1 draws slices more typical of ``position`` (``vqvae.sampling``; no effect
    without a position). Every setting is checked first (form fields arrive as None, floats or
    strings)."""
    prior, vqvae = models.prior, decoder(models, decoder_name)
    n = whole_number(n, "number of samples", 1, MAX_SAMPLES)
    temperature = real_number(temperature, "temperature", 0.0, 10.0)
    guidance = real_number(guidance, "guidance", 0.0, 10.0)
    top_k = whole_number(top_k, "top-k", 0, prior.num_codes)
    seed = whole_number(seed, "seed", 0, MAX_SEED)
    if position is not None:
        position = whole_number(position, "slice position", 0, prior.num_positions - 1)
    keep_rows = whole_number(keep_rows, "rows to keep", 0, prior.grid_size)
    if initial is not None and np.asarray(initial).shape != (prior.grid_size, prior.grid_size):
        raise InputError(f"the slice's code grid is {np.asarray(initial).shape}; the prior needs "
                         f"{prior.grid_size}x{prior.grid_size}")
    start = None if initial is None else torch.from_numpy(np.asarray(initial)).long()[None].expand(n, -1, -1)
    rows_iter = iter_rows_cached(prior, n, positions=None if position is None else torch.full((n,), position),
                                 temperature=temperature, top_k=top_k or None,
                                 generator=torch.Generator().manual_seed(seed),
                                 initial=start, keep_rows=keep_rows if initial is not None else 0,
                                 guidance=guidance)
    for rows, codes in rows_iter:
        if rows % every == 0 or rows == prior.grid_size:
            yield partial_decode(vqvae, codes, rows), rows, prior.grid_size


# -- surprise -----------------------------------------------------------------------------

REGION_FULL_SCALE = 4.0  # bits beyond expected at full brightness (lesion regions score ~2-6)

def surprise_view(models: Models, image: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, str]:
    """The slice's regional surprise under the prior (``surprise.regional_surprise``: bits beyond
    what the prior expected, pooled over neighbouring codes) as a heat map, and its total
    surprise in bits beside what unaltered validate slices score (where the weights carry that
    reference)."""
    position, where = None, ""
    if models.position_net is not None:  # an upload's position is unknown: read it from the slice
        with torch.no_grad():
            k = int(models.position_net(torch.from_numpy(image)[None, None]).argmax(1))
        if 0 <= k < models.prior.num_positions:
            position, where = torch.tensor([k]), f" at slice position {k} (read from the slice)"
    bits, expected = (t[0].numpy() for t in surprise_and_expected(
        models.prior, torch.from_numpy(np.asarray(codes)).long()[None], position))
    total = float(bits.sum())
    text = f"**Surprise under the prior{where}:** {total:.0f} bits for the whole slice"
    reference = models.surprise_reference
    if reference:
        text += (f" (unaltered validate slices: {reference['total_bits_mean']:.0f} ± "
                 f"{reference['total_bits_std']:.0f}, 99th percentile {reference['total_bits_p99']:.0f})")
    text += (". Bright regions are codes the prior did not expect, beyond how hard it expected them to be "
             "(pooled over neighbouring codes); a causal prior also spreads surprise below and to the right.")
    return heat_map(regional_surprise(bits, expected), image, full_scale=REGION_FULL_SCALE), text


# -- volumes -------------------------------------------------------------------------------

def volume_stream(models: Models, temperature=1.0, top_k=0, seed=0, decoder_name: str | None = None):
    """Sample one volume slice by slice, bottom up (``sampling.iter_volume``); yield (slices so
    far, uint8 (H, W) each, slices done, slices total) after each slice."""
    if models.volume_prior is None:
        raise InputError("these weights have no volume prior (prior-volume/): volumes cannot be sampled")
    temperature = real_number(temperature, "temperature", 0.0, 10.0)
    top_k = whole_number(top_k, "top-k", 0, models.prior.num_codes)
    seed = whole_number(seed, "seed", 0, MAX_SEED)
    vqvae = decoder(models, decoder_name)
    slices, total = [], models.volume_prior.num_positions
    for k, codes in iter_volume(models.prior, models.volume_prior, 1, total, temperature, top_k or None, seed):
        slices.append(to_uint8(vqvae.decode(codes)[0, 0]))
        yield slices, k + 1, total


@torch.no_grad()
def reconstruct_volume(vqvae: VQVAE, path, batch_size: int = 8) -> tuple[np.ndarray, str]:
    """Every axial slice of an uploaded NIfTI volume through the VQ-VAE (each made 256x256 as a
    single slice is) -> (uint8 (slices, 256, 256) reconstructions, a note for the user)."""
    volume = NiftiVolume(path)
    rebuilt = None
    for start in range(0, volume.count, batch_size):  # the output is allocated once, filled in batches
        images = np.stack([fit_to_square(volume.slice_uint8(k))[0] for k in range(start, min(start + batch_size,
                                                                                             volume.count))])
        if rebuilt is None:
            rebuilt = np.empty((volume.count, *images.shape[1:]), np.uint8)
        rebuilt[start:start + len(images)] = to_uint8(vqvae.reconstruct(to_unit(torch.from_numpy(images))[:, None])[0][:, 0])
    note = f"{volume.count} slices of {volume.shape[0]}x{volume.shape[1]}, each made {rebuilt.shape[1]}x{rebuilt.shape[2]}"
    return rebuilt, note
