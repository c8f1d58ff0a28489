"""Every kind of bad upload the app is tested with, and the message a user must see for it.
Used by tests/test_demo.py (through the functions) and benchmarks/bad_uploads.py (through the
running app)."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image


def _png(array, mode=None) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)).save(buffer, "PNG")
    return buffer.getvalue()


def _nifti(data) -> bytes:
    import nibabel
    image = nibabel.Nifti1Image(np.asarray(data, np.float32), np.eye(4))
    return gzip.compress(image.to_bytes())


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _bomb(side) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


def _nan_volume():
    volume = np.ones((16, 16, 4), np.float32)
    volume[1, 1, 1] = np.nan
    return volume


def _inf_volume():
    volume = np.ones((16, 16, 4), np.float32)
    volume[2, 2, 2] = np.inf
    return volume


# (what it is, file name, bytes maker, what the user is told: a part of the message)
BAD_UPLOADS = [
    ("zero-byte PNG", "empty.png", lambda: b"", "the uploaded file is empty"),
    ("text renamed .png", "notes.png", lambda: b"shopping list: milk, eggs", "not a readable PNG or JPEG"),
    ("truncated PNG", "cut.png", lambda: _png(np.zeros((64, 64), np.uint8))[:60], "not a readable PNG or JPEG"),
    ("corrupt PNG body", "corrupt.png",
     lambda: (lambda b: b[:40] + bytes(len(b) - 48) + b[-8:])(_png(np.arange(4096, dtype=np.uint8).reshape(64, 64))),
     "not a readable PNG or JPEG"),
    ("truncated JPEG", "cut.jpg", lambda: _jpeg()[:200], "not a readable PNG or JPEG"),
    ("1-pixel image", "dot.png", lambda: _png(np.zeros((1, 1), np.uint8)), "only 1x1 pixels"),
    ("81-megapixel image (9000x9000)", "big.png", lambda: _bomb(9000), "megapixels"),
    ("decompression bomb (20000x20000)", "bomb.png", lambda: _bomb(20000), "megapixels"),
    ("NIfTI with NaN", "nan.nii.gz", lambda: _nifti(_nan_volume()), "NaN or Inf"),
    ("NIfTI with Inf", "inf.nii.gz", lambda: _nifti(_inf_volume()), "NaN or Inf"),
    ("4-D NIfTI", "4d.nii.gz", lambda: _nifti(np.ones((8, 8, 4, 3))), "expected a 3-D NIfTI volume"),
    ("NIfTI with no slices", "none.nii.gz", lambda: _nifti(np.ones((8, 8, 0))), "empty"),
    ("garbage named .nii.gz", "junk.nii.gz", lambda: gzip.compress(b"not nifti"), "not a readable NIfTI"),
]

# Unusual but valid uploads that must work (the app converts them).
GOOD_UPLOADS = [
    ("16-bit PNG", "deep.png", lambda: _png((np.arange(65536, dtype=np.uint32).reshape(256, 256)).astype(np.uint16))),
    ("RGB PNG", "rgb.png", lambda: _png(np.zeros((256, 256), np.uint8), "RGB")),
    ("RGBA PNG", "rgba.png", lambda: _png(np.zeros((256, 256), np.uint8), "RGBA")),
    ("palette PNG", "palette.png", lambda: _png(np.zeros((256, 256), np.uint8), "P")),
    ("JPEG, 64x64", "photo.jpg", _jpeg),
]


def write(folder: Path, name: str, make) -> Path:
    path = Path(folder) / name
    path.write_bytes(make())
    return path
