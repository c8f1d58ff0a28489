"""Shared fixtures: small synthetic 'brain' slices in the OASIS layout, made on the fly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqvae.testing import synthetic_slice, write_split  # noqa: F401 (fixtures' material, re-exported)

from tests.strict import skip_or_fail

# Small tensors gain nothing from a second thread, and CI shares its two cores.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
OASIS = ROOT.parent / "shared" / "oasis"
BUNDLED = ROOT / "assets" / "models"  # the app's weights


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
    """The real OASIS slices beside the checkout; skips where they are absent, fails in CI (tests/strict.py)."""
    root = OASIS / "keras_png_slices_data"
    if not (root / "keras_png_slices_validate").is_dir():
        skip_or_fail("real OASIS data not present (../shared/oasis)")
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
    prior = GatedPixelCNN(num_codes=16, channels=8, layers=2)
    # The prior starts its condition embeddings (the slice position's gate biases) at zero, so an
    # untrained prior would ignore the position and a test could not tell whether it is passed
    # on; random ones (still seeded above) make every position sample differently.
    for layer in prior.layers:
        torch.nn.init.normal_(layer.condition.weight, std=1.0)
    prior.save_pretrained(folder / "prior")
    (folder / "prior" / "code_frequencies.json").write_text(json.dumps(list(range(1, 17))))
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def tiny_models(tiny_weights):
    from vqvae.hub import load_models
    return load_models(str(tiny_weights), None)
