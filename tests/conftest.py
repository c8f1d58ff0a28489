"""Shared fixtures: small synthetic 'brain' slices in the OASIS layout, made on the fly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Small tensors gain nothing from a second thread, and CI shares its two cores.
torch.set_num_threads(1)

OASIS = Path(__file__).resolve().parents[1].parent / "shared" / "oasis"


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
    folder.mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        for k in range(slices_per_subject):
            Image.fromarray(synthetic_slice(rng, size)).save(folder / f"case_{subject:03d}_slice_{k}.nii.png")


@pytest.fixture(scope="session")
def oasis_like(tmp_path_factory) -> Path:
    """A root with keras_png_slices_train (12 images) and keras_png_slices_validate (4)."""
    root = tmp_path_factory.mktemp("oasis_like")
    rng = np.random.default_rng(0)
    write_split(root / "keras_png_slices_train", [1, 2, 3], 4, rng)
    write_split(root / "keras_png_slices_validate", [402], 4, rng)
    return root


@pytest.fixture(scope="session")
def oasis_root() -> Path:
    """The real OASIS slices beside the checkout; skips the test where they are absent."""
    root = OASIS / "keras_png_slices_data"
    if not (root / "keras_png_slices_validate").is_dir():
        pytest.skip("real OASIS data not present (../shared/oasis)")
    return root


def write_tiny_weights(folder: Path) -> Path:
    """A randomly initialised VQ-VAE and prior, in the layout the app loads (vqvae/, prior/)."""
    import json

    from vqvae.model import VQVAE
    from vqvae.prior import GatedPixelCNN
    torch.manual_seed(0)
    vqvae = VQVAE(num_codes=16, code_dim=8, base_channels=4, hidden_channels=8, res_hidden=4)
    vqvae.train()
    vqvae(torch.rand(2, 1, 64, 64))  # data-dependent codebook init
    vqvae.eval().save_pretrained(folder / "vqvae")
    GatedPixelCNN(num_codes=16, channels=8, layers=2).save_pretrained(folder / "prior")
    (folder / "prior" / "code_frequencies.json").write_text(json.dumps(list(range(1, 17))))
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def tiny_models(tiny_weights):
    from vqvae.hub import load_models
    return load_models(str(tiny_weights))
