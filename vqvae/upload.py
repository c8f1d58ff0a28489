"""What a user uploads, made into the 256x256 uint8 slice the models take.

Every check happens on what a file *decodes to*, before decoding it: a 1.6 KB PNG can claim
8 x 200000 pixels and a 2 MB ``.nii.gz`` can hold 400 million zeros, so sizes are read from the
image or NIfTI header and refused before any pixel is allocated. Every problem raises
``InputError`` with a message meant for the user.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .data import DataError, to_grayscale_uint8
from .images import to_uint8

SIZE = 256
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 8192 * 8192     # a 2-D image, decoded
MAX_SIDE = 8192              # either side of an image or of a volume's slice
MAX_ASPECT = 8               # longer side / shorter side: padding to a square costs longer side ** 2
MAX_VOXELS = 256 * 256 * 256  # a whole NIfTI volume (64 MB as float32); OASIS volumes have 6.4 M
MAX_SLICES = 512             # axial slices of a volume (each is reconstructed on its own)
MAX_HEADER_BYTES = 2**20     # header + extensions before the voxels: nibabel reads them all into memory


class InputError(ValueError):
    """A problem with what the user gave; the message is shown to them as is."""


def check_shape(width: int, height: int, what: str = "image"):
    """Refuse sizes whose processing would cost too much, before anything is allocated."""
    if min(width, height) < 8:
        raise InputError(f"the {what} is only {width}x{height} pixels")
    if width * height > MAX_PIXELS:
        raise InputError(f"the {what} is {width}x{height} pixels; the limit is {MAX_PIXELS // 10**6} megapixels")
    if max(width, height) > MAX_SIDE:
        raise InputError(f"the {what} is {width}x{height} pixels; each side may be at most {MAX_SIDE}")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InputError(f"the {what} is {width}x{height} pixels; its sides may differ by at most {MAX_ASPECT}x")


def fit_to_square(image: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, str]:
    """Pad a (H, W) uint8 image with black to a centred square, then resize to size x size.
    Padding (not cropping or stretching) keeps the whole head and its proportions.
    Returns the image and a note saying what was done."""
    h, w = image.shape
    if (h, w) == (size, size):
        return image, f"{size}x{size}: used as is"
    check_shape(w, h)  # the square below costs max(h, w) ** 2 bytes
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = image
    resized = np.asarray(Image.fromarray(square).resize((size, size), Image.BICUBIC))
    padded = " padded to a square and" if h != w else ""
    return resized, f"{w}x{h}:{padded} resized to {size}x{size}"


def _check_file(path: Path):
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
    _check_file(path)
    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as image:  # nothing else gets decoded
            check_shape(image.width, image.height)  # from the header: nothing decoded yet
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


def _voxel_offset(path: Path) -> int:
    """Where a NIfTI file's voxels start, read from its fixed header alone (NIfTI-1: a float32 at
    byte 108 of 348; NIfTI-2: an int64 at byte 168 of 540; either byte order). Between the header
    and that offset lie extensions, which nibabel reads whole into memory: a small .nii.gz can
    claim gigabytes of them, so this is checked before nibabel opens the file."""
    import gzip
    import struct
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(540)
    except (OSError, EOFError) as error:
        raise InputError(f"this is not a readable NIfTI volume ({type(error).__name__})") from None
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return int(struct.unpack(order + "f", head[108:112])[0])
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return int(struct.unpack(order + "q", head[168:176])[0])
    raise InputError("this is not a readable NIfTI volume (no NIfTI-1 or NIfTI-2 header)")


class NiftiVolume:
    """A NIfTI file checked by its header before any voxel is read (extensions, shape, slices,
    voxels against the limits), then read once, in ascending slabs from one open file (a .nii.gz
    re-inflates from its start for every backward read), as float32: at most MAX_VOXELS, 64 MB.
    Axial slices are on the last axis."""

    def __init__(self, path: str | Path):
        path = Path(path)
        _check_file(path)
        try:
            import nibabel
        except ImportError:
            raise InputError("reading NIfTI needs the nibabel package (pip install nibabel)") from None
        offset = _voxel_offset(path)
        if not 0 <= offset <= MAX_HEADER_BYTES:
            raise InputError(f"the NIfTI header puts the voxels {offset / 2**20:.0f} MB into the file; "
                             f"the limit is {MAX_HEADER_BYTES // 2**20} MB of header and extensions")
        try:
            self.image = nibabel.load(str(path), keep_file_open=True)
            shape = tuple(int(s) for s in self.image.shape)
            dtype = np.dtype(self.image.get_data_dtype())
        except Exception as error:
            raise InputError(f"this is not a readable NIfTI volume ({type(error).__name__})") from None
        if dtype.kind not in "biuf":
            raise InputError(f"the NIfTI volume holds {dtype} values; expected real numbers")
        while len(shape) > 3 and shape[-1] == 1:  # trailing singleton axes (time, ...) carry nothing
            shape = shape[:-1]
        if len(shape) == 2:
            shape = shape + (1,)
        if len(shape) != 3:
            raise InputError(f"expected a 3-D NIfTI volume, got {len(shape)} dimensions {shape}")
        if 0 in shape:
            raise InputError(f"the NIfTI volume is empty (shape {shape})")
        voxels = int(np.prod(shape, dtype=np.int64))
        if voxels > MAX_VOXELS:
            raise InputError(f"the NIfTI volume is {'x'.join(map(str, shape))} = {voxels / 1e6:.0f} M voxels; "
                             f"the limit is {MAX_VOXELS / 1e6:.1f} M")
        if shape[2] > MAX_SLICES:
            raise InputError(f"the NIfTI volume has {shape[2]} slices; the limit is {MAX_SLICES}")
        check_shape(shape[0], shape[1], "volume's slice")
        self.shape = shape
        self._voxels = None

    @property
    def count(self) -> int:
        return self.shape[2]

    def voxels(self) -> np.ndarray:
        """The whole volume, float32 (H, W, slices), read once."""
        if self._voxels is None:
            data, raw_shape = self.image.dataobj, self.image.shape
            volume = np.empty(self.shape, dtype=np.float32)
            try:
                for start in range(0, self.count, 16):
                    if len(raw_shape) == 2:
                        block = np.asarray(data, dtype=np.float32)[..., None]
                    else:
                        index = (slice(None), slice(None), slice(start, start + 16)) + (0,) * (len(raw_shape) - 3)
                        block = np.asarray(data[index], dtype=np.float32)
                    volume[:, :, start:start + block.shape[2]] = block
            except Exception as error:  # truncated or corrupt voxel data (ValueError, EOFError, zlib.error...)
                raise InputError(f"the NIfTI volume is truncated or corrupt ({type(error).__name__})") from None
            if not np.isfinite(volume).all():
                raise InputError("the NIfTI volume contains NaN or Inf values")
            self._voxels = volume
        return self._voxels

    def intensity_range(self) -> tuple[float, float]:
        """The volume's min and max: the one scale for every slice of it."""
        volume = self.voxels()
        return float(volume.min()), float(volume.max())

    def slice_uint8(self, index: int) -> np.ndarray:
        """Axial slice ``index`` as uint8, scaled by the whole volume's range (one rule for a
        slice and for the volume it belongs to), rotated to the usual radiological view."""
        index = int(np.clip(index, 0, self.count - 1))
        low, high = self.intensity_range()
        pixels = self.voxels()[:, :, index]
        scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
        return to_uint8(np.rot90(scaled))


def read_upload(path: str | Path | None, slice_index: int | None = None) -> tuple[np.ndarray, str, int, int]:
    """Any supported upload -> (256x256 uint8 slice, note for the user, number of slices, the
    slice used). A NIfTI volume gives its middle axial slice unless ``slice_index`` is set."""
    if path is None:
        raise InputError("upload a slice first (PNG, JPEG or NIfTI)")
    if is_nifti(path):
        volume = NiftiVolume(path)
        count = volume.count
        index = int(np.clip(count // 2 if slice_index is None else slice_index, 0, count - 1))
        image, note = fit_to_square(volume.slice_uint8(index))
        return image, f"NIfTI slice {index} of {count}, {note}", count, index
    image, note = fit_to_square(read_image(path))
    return image, note, 1, 0
