"""Brain MRI slices from disk: find them, parse OASIS names, preload a split into memory.

The OASIS PNG release keeps one folder per split under a root:
``keras_png_slices_{train,validate,test}/case_<subject>_slice_<k>.nii.png``.
Any plain folder of grayscale PNG/JPEG slices works too; such files simply have
no subject or slice position.

A flat folder (images directly in ``--data``, no split sub-folders) is split in two, never used
whole for every split, which would put every validation figure on training images: each subject
(``case_<subject>``) goes whole to one side, as slices of one head are near-duplicates, and a file
whose name carries no subject goes alone. The side is fixed by a salted SHA-256 of the subject (or
file name): below ``VALIDATE_SHARE`` -> validate, else train. Each group's side depends on nothing
else, so adding or removing images never moves another subject across. ``test`` is refused for a
flat folder rather than handed the validate images under another name: a test split must be held
out from model selection too, so it has to be a folder of its own.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "validate", "test")
SLICES_PER_SUBJECT = 32  # the OASIS release takes 32 axial slices from each volume
_OASIS_NAME = re.compile(r"case_(\d+)_slice_(\d+)")
VALIDATE_SHARE = 0.15  # of the subjects (or unnamed files) of a flat folder
_SPLIT_SALT = "brainvq-flat-split-v1"  # changing it reshuffles every flat folder's split


class DataError(ValueError):
    """A dataset problem a user can fix: a missing folder, an unreadable image, a wrong size."""


def parse_oasis_name(name: str) -> tuple[int, int] | None:
    """``case_012_slice_7.nii.png`` -> (12, 7); None for names outside the OASIS scheme."""
    match = _OASIS_NAME.search(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def split_dir(root: str | Path, split: str) -> Path:
    """Where a split's images live: ``root/keras_png_slices_<split>`` (also one level down,
    inside ``keras_png_slices_data``), else ``root/<split>``, else ``root`` itself when it
    directly holds images: a flat folder, of which load_split takes only the split's share
    (``flat_split``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    for candidate in (root / f"keras_png_slices_{split}",
                      root / "keras_png_slices_data" / f"keras_png_slices_{split}",
                      root / split):
        if candidate.is_dir():
            return candidate
    if list_images(root, must_exist=False):
        return root
    raise DataError(f"no '{split}' split under {root} (looked for keras_png_slices_{split}/ and {split}/)")


def _split_group(name: str) -> str:
    """What goes to one side together: a subject's slices, else the single file."""
    parsed = parse_oasis_name(name)
    return f"subject {parsed[0]}" if parsed else f"file {name}"


def _hash_share(group: str) -> float:
    """A fraction in [0, 1) fixed by the group's name alone (stable across runs and machines)."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def flat_split(folder: str | Path, split: str) -> list[Path]:
    """The ``train`` or ``validate`` share of a folder that directly holds its images, split by
    subject where names carry one, else by file name (see the module docstring). Warns with the
    rule and the counts; a DataError for ``test``, or where one side would be empty."""
    folder = Path(folder)
    if split not in ("train", "validate"):
        raise DataError(f"{folder} holds its images directly, with no '{split}' sub-folder: a flat folder is "
                        f"split only into train and validate (validate holds out ~{VALIDATE_SHARE:.0%} of the "
                        f"subjects); use --split validate, or make a {split}/ sub-folder")
    paths = list_images(folder)
    groups = [_split_group(p.name) for p in paths]
    distinct = set(groups)
    held = {g for g in distinct if _hash_share(g) < VALIDATE_SHARE}
    sides = {"train": [p for p, g in zip(paths, groups) if g not in held],
             "validate": [p for p, g in zip(paths, groups) if g in held]}
    named = sum(g.startswith("subject ") for g in distinct)
    unit = ("subjects" if named == len(distinct) else "files" if not named
            else f"groups ({named} subjects, {len(distinct) - named} files without one)")
    rule = ("by subject" if unit == "subjects" else "by file name" if unit == "files"
            else "by subject, else by file name")
    counts = (f"{len(distinct) - len(held)} of {len(distinct)} {unit} -> train ({len(sides['train'])} images), "
              f"{len(held)} -> validate ({len(sides['validate'])} images)")
    empty = [side for side, files in sides.items() if not files]
    if empty:
        raise DataError(f"{folder} holds its images directly and is too small to split {rule}: {counts}, so "
                        f"{' and '.join(empty)} would be empty; make {folder / 'train'}/ and "
                        f"{folder / 'validate'}/ sub-folders (different subjects in each)")
    warnings.warn(f"flat folder {folder}: split {rule} (salted SHA-256), {counts}", stacklevel=3)
    return sides[split]


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def list_images(folder: str | Path, must_exist: bool = True) -> list[Path]:
    """Image files directly in ``folder``, in natural order (slice_2 before slice_10)."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=_natural_key) if folder.is_dir() else []
    if must_exist and not files:
        raise DataError(f"no PNG/JPEG images in {folder}")
    return files


def read_slice(path: str | Path, size: int | None = 256) -> np.ndarray:
    """One grayscale slice as a uint8 (H, W) array. Colour images are converted to luminance;
    16-bit images are rescaled to 8 bits. Raises DataError naming the file on any failure."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            array = to_grayscale_uint8(image)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    except Exception as error:  # PIL raises many types for corrupt files
        raise DataError(f"cannot read image {path}: {error}") from None
    if size is not None and array.shape != (size, size):
        raise DataError(f"{path}: expected {size}x{size}, got {array.shape[1]}x{array.shape[0]}")
    return array


def to_grayscale_uint8(image: Image.Image) -> np.ndarray:
    """A PIL image of any common mode as a uint8 (H, W) array."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise DataError("image contains NaN or Inf values")
        low, high = array.min(), array.max()
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return np.round(scaled).astype(np.uint8)
    if image.mode != "L":
        image = image.convert("L")  # RGB, RGBA, P, 1, LA... via ITU-R 601 luminance
    return np.asarray(image, dtype=np.uint8).copy()


@dataclass
class SliceSet:
    """A split held in memory: images as uint8 (N, 1, H, W), plus OASIS metadata (-1 if unknown)."""
    images: torch.Tensor
    subjects: torch.Tensor
    positions: torch.Tensor
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, index) -> torch.Tensor:
        """Images at ``index`` as float32 in [0, 1]."""
        return self.images[index].float().div_(255.0)


def load_split(root: str | Path, split: str = "train", limit: int | None = None,
               size: int = 256, progress: bool = True, skip_bad: bool = False) -> SliceSet:
    """Preload a split into memory as uint8 (the 9664-slice train split is ~630 MB). A flat
    folder gives only the split's share of its images (``flat_split``)."""
    folder = split_dir(root, split)
    paths = flat_split(folder, split) if folder == Path(root) else list_images(folder)
    return _load_paths(paths[:limit], folder, size=size, progress=progress, desc=split, skip_bad=skip_bad)


def load_folder(folder: str | Path, limit: int | None = None, size: int = 256,
                progress: bool = True, desc: str = "slices", skip_bad: bool = False) -> SliceSet:
    """Read every image of a folder. An unreadable or wrongly sized file stops with a DataError
    naming it; with ``skip_bad`` it is left out with a warning, and the count is reported.
    Every image: a flat folder is not split here (reconstruction reads folders this way)."""
    return _load_paths(list_images(folder)[:limit], folder, size=size, progress=progress, desc=desc,
                       skip_bad=skip_bad)


def _load_paths(paths: list[Path], folder: Path, size: int, progress: bool, desc: str,
                skip_bad: bool) -> SliceSet:
    images = torch.empty((len(paths), 1, size, size), dtype=torch.uint8)
    subjects = torch.full((len(paths),), -1, dtype=torch.long)
    positions = torch.full((len(paths),), -1, dtype=torch.long)
    kept: list[Path] = []
    for path in tqdm(paths, desc=f"reading {desc}", disable=not progress, unit="img"):
        try:
            pixels = read_slice(path, size)
        except DataError as error:
            if not skip_bad:
                raise
            warnings.warn(f"skipped: {error}", stacklevel=2)
            continue
        i = len(kept)
        images[i, 0] = torch.from_numpy(pixels)
        parsed = parse_oasis_name(path.name)
        if parsed:
            subjects[i], positions[i] = parsed
        kept.append(path)
    skipped = len(paths) - len(kept)
    if not kept:
        raise DataError(f"no readable {size}x{size} images in {folder} ({skipped} skipped)")
    if progress or skipped:
        print(f"read {len(kept)} images from {folder}" + (f", skipped {skipped} bad files" if skipped else ""))
    n = len(kept)
    return SliceSet(images[:n].clone() if skipped else images, subjects[:n], positions[:n], kept)
