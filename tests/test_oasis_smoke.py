"""Smoke tests on real OASIS slices from ../shared/oasis; skipped where the data is absent, failed instead in CI (tests/strict.py)."""
import numpy as np
import torch

from vqvae.data import load_split
from tests.conftest import BUNDLED
from vqvae.hub import load_model
from vqvae.metrics import evaluate_reconstructions
from vqvae.model import VQVAE


def test_real_slices_load_with_metadata(oasis_root):
    split = load_split(oasis_root, "validate", limit=40, progress=False)
    assert split.images.shape == (40, 1, 256, 256)
    assert (split.subjects >= 402).all() and set(split.positions.tolist()) <= set(range(32))
    zero_fraction = (split.images == 0).float().mean().item()
    assert 0.3 < zero_fraction < 0.8  # about half of every slice is background


def test_a_few_training_steps_on_real_slices_lower_the_loss(oasis_root):
    torch.manual_seed(0)
    split = load_split(oasis_root, "train", limit=16, progress=False)
    model = VQVAE()  # the default architecture
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = split.batch(slice(0, 8))
    losses = []
    for _ in range(25):
        reconstruction, commit, _ = model(x)
        loss = torch.nn.functional.mse_loss(reconstruction, x) + commit
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.6 * losses[0]


def test_bundled_vqvae_reconstructs_real_slices(oasis_root):
    model = load_model(VQVAE, BUNDLED / "vqvae")
    split = load_split(oasis_root, "validate", limit=None, progress=False)
    every_35th = split.images[::35]  # 32 slices spread over the split
    metrics = evaluate_reconstructions(model, every_35th)
    assert metrics["ssim"] > 0.9 and metrics["usage"] > 0.2


def test_bundled_realistic_decoder_stays_near_the_input_on_real_slices(oasis_root):
    """The realistic decoder draws detail of its own (not the faithful decoder's image) yet keeps
    the anatomy: SSIM 0.91 on all of validate when shipped; here 32 slices spread over it."""
    from vqvae.hub import load_realistic
    faithful = load_model(VQVAE, BUNDLED / "vqvae")
    realistic = load_realistic(faithful, BUNDLED / "vqvae-realistic")
    every_35th = load_split(oasis_root, "validate", limit=None, progress=False).images[::35]
    metrics = evaluate_reconstructions(realistic, every_35th)
    assert metrics["ssim"] > 0.88
    x = every_35th[:4].float() / 255
    codes = faithful.encode(x)
    assert (realistic.decode(codes) - faithful.decode(codes)).abs().mean() > 0.005
