"""Material for tests and benchmarks (as ``numpy.testing`` is for numpy's): synthetic head-like
slices in the OASIS layout, every kind of bad upload with the message a user must see for it,
and the SIGKILL-and-resume harness of the crash-safety checks. Used by tests/ and benchmarks/.
"""
from __future__ import annotations

import gzip
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from .training import CHECKPOINT, MODEL


# -- synthetic slices ------------------------------------------------------------------------

def synthetic_slice(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A head-like uint8 image: a bright ellipse with darker blobs, exactly 0 outside."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    a, b = rng.uniform(0.25, 0.4, 2)
    image = np.where((xx / a) ** 2 + (yy / b) ** 2 < 1, rng.uniform(0.5, 0.9), 0.0)
    for _ in range(4):
        cx, cy, r = rng.uniform(-0.15, 0.15, 2).tolist() + [rng.uniform(0.03, 0.08)]
        image = np.where(((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) & (image > 0), rng.uniform(0.1, 0.4), image)
    return np.round(image * 255).astype(np.uint8)


def write_split(folder: Path, subjects, slices_per_subject: int, rng, size: int = 256):
    """Synthetic slices named as the OASIS release names them (case_<subject>_slice_<k>)."""
    folder.mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        for k in range(slices_per_subject):
            Image.fromarray(synthetic_slice(rng, size)).save(folder / f"case_{subject:03d}_slice_{k}.nii.png")


# -- bad uploads -----------------------------------------------------------------------------


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


def _thin_strip() -> bytes:
    """8 x 200000 pixels in 1.6 KB: padding it to a square would take 37 GB."""
    buffer = io.BytesIO()
    Image.new("L", (200000, 8)).save(buffer, "PNG")
    return buffer.getvalue()


def _huge_nifti_header() -> bytes:
    """A NIfTI header promising 1024 x 1024 x 400 voxels: refused from the header alone (the
    voxels need not even be there)."""
    import nibabel
    header = nibabel.Nifti1Header()
    header.set_data_shape((1024, 1024, 400))
    header.set_data_dtype(np.float32)
    return gzip.compress(header.binaryblock + b"\0" * 4 + bytes(4096))


def _nifti_with_huge_extensions() -> bytes:
    """A header whose voxels start 200 MB in: nibabel would read 200 MB of extensions."""
    import nibabel
    header = nibabel.Nifti1Header()
    header.set_data_shape((8, 8, 4))
    header["vox_offset"] = 200 * 2**20
    return gzip.compress(header.binaryblock + b"\1\0\0\0" + bytes(4096))


def _truncated_nifti() -> bytes:
    whole = _nifti(np.random.default_rng(0).random((32, 32, 16)))
    return whole[:len(whole) // 2]


def _tiff_named_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buffer, "TIFF")
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
    ("8 x 200000 strip", "strip.png", _thin_strip, "at most 8192"),
    ("NIfTI header of 1024x1024x400", "huge.nii.gz", _huge_nifti_header, "the limit is 16.8 M"),
    ("NIfTI claiming 200 MB of extensions", "ext.nii.gz", _nifti_with_huge_extensions, "1 MB of header"),
    ("NIfTI of 8x8x4096 slices", "tall.nii.gz", lambda: _nifti(np.ones((8, 8, 4096))), "the limit is 512"),
    ("truncated NIfTI", "cut.nii.gz", _truncated_nifti, "truncated or corrupt"),
    ("TIFF named .png", "tiff.png", _tiff_named_png, "not a readable PNG or JPEG"),
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


# -- crash safety ----------------------------------------------------------------------------

TINY_VQVAE = ["--codes", "16", "--code-dim", "8", "--base-channels", "4", "--hidden-channels", "8",
              "--batch-size", "4", "--no-progress", "--threads", "1", "--precision", "fp32"]


def train_command(data, out, *extra, epochs: int = 6) -> list[str]:
    """A tiny, seeded VQ-VAE training run on the CPU (run it from the repository root)."""
    return [sys.executable, "-m", "train.vqvae", "--data", str(data), "--out", str(out), *TINY_VQVAE,
            "--epochs", str(epochs), "--eval-minutes", "1000", "--seed", "3", *extra]


def kill_and_resume(data, out: Path, kills: int, root: Path, seed: int = 0, epochs: int = 6) -> int:
    """Train into ``out``, SIGKILL the trainer ``kills`` times at random moments once training is
    under way, resuming each time, then let it finish. Returns how many kills landed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(seed)
    landed = 0
    for _ in range(kills + 10):
        process = subprocess.Popen(train_command(data, out, "--resume", "--checkpoint-steps", "1", epochs=epochs),
                                   cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if landed < kills:
            deadline = time.time() + 120
            while not (out / CHECKPOINT).exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                landed += 1
        _, stderr = process.communicate(timeout=240)
        if process.returncode == 0:
            return landed
        assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    raise AssertionError("training never finished")


def same_weights(a_dir: Path, b_dir: Path) -> bool:
    """Two runs' final models hold bit-identical tensors."""
    a = load_file(Path(a_dir) / MODEL / "model.safetensors")
    b = load_file(Path(b_dir) / MODEL / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
