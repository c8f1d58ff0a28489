"""The functions behind the Gradio app (app.py only builds the UI around them).

Uploads become 256x256 uint8 slices (``read_upload``), slices become reconstructions with
metrics and code maps (``reconstruct_slice``, ``code_map``, ...), and the prior's samples stream
out row by row (``sample_stream``). Every user mistake raises ``InputError`` with a message
meant for the user; the app shows it and keeps serving.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import DataError, to_grayscale_uint8
from .metrics import image_metrics
from .model import VQVAE
from .prior import GatedPixelCNN
from .sampling import iter_rows_cached

SIZE = 256
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 8192 * 8192  # refuse decompression bombs before decoding


class InputError(ValueError):
    """A problem with what the user gave; the message is shown to them as is."""


# -- uploads -------------------------------------------------------------------------------

def fit_to_square(image: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, str]:
    """Pad a (H, W) uint8 image with black to a centred square, then resize to size x size.
    Padding (not cropping or stretching) keeps the whole head and its proportions.
    Returns the image and a note saying what was done."""
    h, w = image.shape
    if (h, w) == (size, size):
        return image, f"{size}x{size}: used as is"
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = image
    resized = np.asarray(Image.fromarray(square).resize((size, size), Image.BICUBIC))
    padded = " padded to a square and" if h != w else ""
    return resized, f"{w}x{h}:{padded} resized to {size}x{size}"


def _check_size(path: Path):
    if not path.is_file():
        raise InputError("no file was uploaded")
    size = path.stat().st_size
    if size == 0:
        raise InputError("the uploaded file is empty")
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"the file is {size / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def read_image(path: str | Path) -> np.ndarray:
    """A PNG/JPEG upload as a (H, W) uint8 array, any mode or bit depth."""
    path = Path(path)
    _check_size(path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"the image is {image.width}x{image.height} pixels; "
                                 f"the limit is {MAX_PIXELS // 10**6} megapixels")
            if min(image.width, image.height) < 8:
                raise InputError(f"the image is only {image.width}x{image.height} pixels")
            image.load()
            return to_grayscale_uint8(image)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"the image is far too large; the limit is {MAX_PIXELS // 10**6} megapixels") from None
    except DataError as error:
        raise InputError(f"cannot use this image: {error}") from None
    except Exception as error:  # PIL raises many types for corrupt or non-image files
        raise InputError(f"this is not a readable PNG or JPEG image ({type(error).__name__})") from None


def read_nifti(path: str | Path) -> np.ndarray:
    """A NIfTI volume as float32 (H, W, slices); 2-D images count as one slice."""
    path = Path(path)
    _check_size(path)
    try:
        import nibabel
        volume = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)
    except ImportError:
        raise InputError("reading NIfTI needs the nibabel package (pip install nibabel)") from None
    except Exception as error:
        raise InputError(f"this is not a readable NIfTI volume ({type(error).__name__})") from None
    if volume.size == 0:
        raise InputError(f"the NIfTI volume is empty (shape {volume.shape})")
    volume = np.squeeze(volume)
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.ndim != 3:
        raise InputError(f"expected a 3-D NIfTI volume, got {volume.ndim} dimensions {volume.shape}")
    if not np.isfinite(volume).all():
        raise InputError("the NIfTI volume contains NaN or Inf values")
    return volume


def nifti_slice(volume: np.ndarray, index: int) -> np.ndarray:
    """Axial slice ``index`` of a volume as uint8, scaled by the volume's own range."""
    index = int(np.clip(index, 0, volume.shape[2] - 1))
    low, high = float(volume.min()), float(volume.max())
    scaled = (volume[:, :, index] - low) / (high - low) if high > low else np.zeros(volume.shape[:2])
    return np.round(np.rot90(scaled) * 255).astype(np.uint8)


def read_upload(path: str | Path, slice_index: int | None = None) -> tuple[np.ndarray, str, int, int]:
    """Any supported upload -> (256x256 uint8 slice, note for the user, number of slices, the
    slice used). A NIfTI volume gives its middle axial slice unless ``slice_index`` is set."""
    if path is None:
        raise InputError("upload a slice first (PNG, JPEG or NIfTI)")
    if is_nifti(path):
        volume = read_nifti(path)
        count = volume.shape[2]
        index = int(np.clip(count // 2 if slice_index is None else slice_index, 0, count - 1))
        image, note = fit_to_square(nifti_slice(volume, index))
        return image, f"NIfTI slice {index} of {count}, {note}", count, index
    image, note = fit_to_square(read_image(path))
    return image, note, 1, 0


# -- models --------------------------------------------------------------------------------

@dataclass
class Models:
    vqvae: VQVAE
    prior: GatedPixelCNN
    source: str  # where the weights came from, for the log and the UI
    code_frequencies: np.ndarray | None = None  # training frequency of each code


# -- reconstruction and the code map ---------------------------------------------------------

def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).float().div(255.0)[None, None]


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = image.numpy() if isinstance(image, torch.Tensor) else image
    return np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)


def error_map(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """|original - reconstruction| as a heat map (black -> red -> yellow), uint8 RGB.
    Scaled so an error of 0.25 (a quarter of the range) is full brightness."""
    error = np.abs(original.astype(np.float32) - reconstruction.astype(np.float32)) / 255.0
    level = np.clip(error / 0.25, 0, 1)
    return to_uint8(np.stack([np.clip(2 * level, 0, 1), np.clip(2 * level - 1, 0, 1),
                              np.zeros_like(level)], axis=-1))


@torch.no_grad()
def reconstruct_slice(vqvae: VQVAE, image: np.ndarray) -> dict:
    """-> reconstruction and error map (uint8), code grid, and SSIM / in-brain SSIM / PSNR."""
    reconstruction, codes = vqvae.reconstruct(to_tensor(image))
    rebuilt = reconstruction[0, 0].numpy()
    metrics = image_metrics(image.astype(np.float64) / 255.0, rebuilt)
    rebuilt = to_uint8(rebuilt)
    return {"reconstruction": rebuilt, "error": error_map(image, rebuilt), "codes": codes[0].numpy(),
            "metrics": metrics}


def palette(num_codes: int) -> np.ndarray:
    """A fixed, well-spread colour per code (golden-ratio hues), uint8 (K, 3)."""
    hue = (np.arange(num_codes) * 0.61803398875) % 1.0
    value = 0.6 + 0.4 * ((np.arange(num_codes) * 7) % 5) / 4
    h6 = hue * 6
    rgb = np.stack([np.clip(np.abs(h6 - 3) - 1, 0, 1), np.clip(2 - np.abs(h6 - 2), 0, 1),
                    np.clip(2 - np.abs(h6 - 4), 0, 1)], axis=1)
    return to_uint8(rgb * value[:, None])


def code_map(codes: np.ndarray, num_codes: int, size: int = SIZE) -> np.ndarray:
    """The code grid as colours, enlarged (nearest) to size x size, uint8 RGB."""
    colours = palette(num_codes)[codes]
    scale = size // codes.shape[0]
    return np.repeat(np.repeat(colours, scale, axis=0), scale, axis=1)


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
def decode_code(vqvae: VQVAE, code: int, grid: int = 32) -> np.ndarray:
    """What one code decodes to alone: a grid filled with it, decoded, uint8."""
    if not 0 <= code < vqvae.num_codes:
        raise InputError(f"code must be between 0 and {vqvae.num_codes - 1}")
    return to_uint8(vqvae.decode(torch.full((1, grid, grid), int(code)))[0, 0])


# -- sampling ------------------------------------------------------------------------------

def partial_decode(vqvae: VQVAE, codes: torch.Tensor, rows_done: int) -> list[np.ndarray]:
    """Decode code grids of which only the first ``rows_done`` rows are final; the rest is
    shown black."""
    images = to_uint8(vqvae.decode(codes)[:, 0])
    images[:, rows_done * vqvae.downsample:] = 0
    return list(images)


def sample_stream(models: Models, n: int, temperature: float = 1.0, top_k: int | None = None,
                  seed: int = 0, position: int | None = None, initial: np.ndarray | None = None,
                  keep_rows: int = 0, every: int = 8):
    """Yield (images, rows done, rows total) while the cached sampler fills the grids, every
    ``every`` rows and at the end. ``initial`` + ``keep_rows`` gives completion of a real slice."""
    prior, vqvae = models.prior, models.vqvae
    if not 1 <= n <= 16:
        raise InputError("number of samples must be between 1 and 16")
    if temperature < 0:
        raise InputError("temperature must be 0 or more")
    if position is not None and not 0 <= position < prior.num_positions:
        raise InputError(f"slice position must be between 0 and {prior.num_positions - 1}")
    if not 0 <= keep_rows <= prior.grid_size:
        raise InputError(f"rows to keep must be between 0 and {prior.grid_size}")
    start = None if initial is None else torch.from_numpy(np.asarray(initial)).long()[None].expand(n, -1, -1)
    rows_iter = iter_rows_cached(prior, n, positions=None if position is None else torch.full((n,), position),
                                 temperature=temperature, top_k=top_k or None,
                                 generator=torch.Generator().manual_seed(int(seed)),
                                 initial=start, keep_rows=keep_rows if initial is not None else 0)
    for rows, codes in rows_iter:
        if rows % every == 0 or rows == prior.grid_size:
            yield partial_decode(vqvae, codes, rows), rows, prior.grid_size
