"""The discriminator's side of the realistic decoder (vqvae/adversarial.py) and the loss that
judges what decode shows (vqvae/trainers.py: --free-background)."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.nn import functional as F

from vqvae.adversarial import (Adversary, PatchDiscriminator, grid_fingerprint, grid_fingerprint_loss, random_crop,
                               spectral_loss)
from vqvae.model import VQVAE, low_pass
from vqvae.trainers import VQVAETraining, vqvae_loss


class Fixed(torch.nn.Module):
    """A "decoder" whose output is given: the loss alone is under test."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, latents):
        return self.output


def test_random_crop_is_a_square_inside_the_image_and_follows_the_seed():
    torch.manual_seed(3)
    rows, cols = random_crop(32, 64, 48)
    assert rows.stop - rows.start == 32 and cols.stop - cols.start == 32
    assert 0 <= rows.start <= 32 and 0 <= cols.start <= 16
    torch.manual_seed(3)
    assert random_crop(32, 64, 48) == (rows, cols)
    assert random_crop(0, 64, 64) == (slice(None), slice(None))
    assert random_crop(128, 64, 64) == (slice(None), slice(None))  # not smaller: the whole image


def test_the_discriminator_judges_the_same_clamped_crop_of_real_and_reconstruction():
    seen = []
    discriminator = PatchDiscriminator(channels=8, layers=2)
    discriminator.blocks[0].register_forward_pre_hook(  # every judgement starts here, input centred as 2x - 1
        lambda module, args: seen.append((args[0].detach() + 1) / 2))
    decoder_weight = torch.nn.Parameter(torch.ones(1))
    adversary = Adversary(discriminator, torch.optim.Adam(discriminator.parameters()), decoder_weight,
                          weight=0.1, adaptive_max=1.0, feature_matching=1.0, crop=16)
    real = torch.rand(2, 1, 64, 64)
    fake = decoder_weight * (real + 0.5) - 0.4  # below 0 and above 1 in places
    loss, logged = adversary.generator_loss(F.l1_loss(fake, real), fake, real, torch.autocast("cpu", enabled=False))
    loss.backward()
    assert decoder_weight.grad is not None and {"g_loss", "adv_weight", "fm"} <= set(logged)
    adversary.discriminator_step(real, fake.detach(), torch.autocast("cpu", enabled=False))
    rows, cols = adversary.window
    assert len(seen) == 2 and all(x.shape == (4, 1, 16, 16) for x in seen)  # one batch: real, then fake
    assert torch.allclose(seen[0][:2], real[..., rows, cols])
    assert torch.allclose(seen[0][2:], fake.detach()[..., rows, cols].clamp(0, 1))
    assert torch.equal(seen[1], seen[0])  # the discriminator's step judges what the decoder's did


def test_a_batch_norm_discriminator_always_sees_both_sides_in_one_batch():
    """Batch statistics of reconstructions alone would rescale away what tells them apart."""
    discriminator = PatchDiscriminator(channels=8, layers=2, norm="batch")
    batches = []
    discriminator.blocks[1][1].register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    decoder_weight = torch.nn.Parameter(torch.ones(1))
    adversary = Adversary(discriminator, torch.optim.Adam(discriminator.parameters()), decoder_weight,
                          weight=0.1, adaptive_max=1.0, feature_matching=1.0, crop=0)
    real = torch.rand(3, 1, 32, 32)
    fake = decoder_weight * real * 0.5
    no_autocast = torch.autocast("cpu", enabled=False)
    loss, _ = adversary.generator_loss(F.l1_loss(fake, real), fake, real, no_autocast)
    loss.backward()
    adversary.discriminator_step(real, fake.detach(), no_autocast)
    assert batches == [6, 6]
    with pytest.raises(ValueError, match="norm"):
        PatchDiscriminator(norm="layer")


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.5])
def test_low_pass_is_scipys_gaussian_filter(sigma):
    images = torch.rand(2, 1, 40, 33, generator=torch.Generator().manual_seed(0))
    # torch's "reflect" padding is scipy's "mirror"; both truncate the kernel at 3 sigma
    reference = ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    assert np.abs(low_pass(images, sigma).numpy() - reference).max() < 1e-6


def test_recon_lowpass_leaves_fine_detail_to_the_discriminator():
    model = VQVAE(downsample=4, num_codes=8, code_dim=4, base_channels=8, hidden_channels=8, res_hidden=8)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    checkerboard = 0.1 * (-1.0) ** (torch.arange(32)[:, None] + torch.arange(32)[None, :])  # detail at the finest scale
    shifted = x + 0.1  # a change at the coarsest scale
    config = dict(data="unused", out="unused", epochs=1, init="unused", decoder_only=True, adversarial=True)
    no_grad = torch.autocast("cpu", enabled=False)

    def loss(output, **settings):
        return float(vqvae_loss(model, Fixed(output), x, VQVAETraining(**config, **settings), no_grad)[0])

    assert loss(x + checkerboard) > 0.01 and loss(x + checkerboard, recon_lowpass=1.0) < 1e-4
    assert loss(shifted, recon_lowpass=1.0) > 0.9 * loss(shifted)  # what the codes fix is still paid for
    with pytest.raises(ValueError, match="--adversarial"):
        VQVAETraining(**{**config, "adversarial": False}, recon_lowpass=1.0)


def test_spectral_loss_compares_band_power_and_ignores_phase_not_periodic_traces():
    generator = torch.Generator().manual_seed(2)
    real = torch.rand(3, 1, 32, 32, generator=generator)
    fake = low_pass(real, 1.0)  # a blurred batch: power missing at high frequencies
    # numpy reference: mean power per 4x4 band of frequencies (the last, partial band averaged alone)
    power = lambda x: (np.abs(np.fft.rfft2(x.numpy()[:, 0], norm="ortho")) ** 2).mean(0)
    bands = lambda p: np.array([[p[i:i + 4, j:j + 4].mean() for j in range(0, p.shape[1], 4)] for i in range(0, 32, 4)])
    ratio = bands(power(fake)) / bands(power(real))
    assert (ratio < 1).any() and (ratio > 1).any()  # both branches of the penalty are checked
    reference = np.where(ratio < 1, -np.log(ratio), ratio - 1).mean()
    assert abs(float(spectral_loss(fake, real)) - reference) < 1e-4
    assert float(spectral_loss(real, real)) == 0.0
    # texture in another phase (a circular shift) has the same power: no cost
    assert float(spectral_loss(torch.roll(real, (5, 3), dims=(-2, -1)), real)) < 1e-4
    # a faint checkerboard (the trace of a transposed convolution: 2 grey levels, 1.6e-5 in MSE)
    # costs far more than blurring the same images
    smooth = torch.full((3, 1, 32, 32), 0.5) + 0.05 * torch.sin(torch.arange(32.0) / 3) + 0.02 * real
    checkerboard = (2 / 255) * (-1.0) ** (torch.arange(32)[:, None] + torch.arange(32)[None, :])
    assert float(spectral_loss(smooth + checkerboard, smooth)) > 1.5 * float(spectral_loss(low_pass(smooth, 1.0), smooth))


def test_grid_fingerprint_finds_a_pattern_locked_to_the_code_cells():
    generator = torch.Generator().manual_seed(4)
    texture = torch.rand(4, 1, 64, 64, generator=generator) * 0.5 + 0.25  # no phase of its own
    stamp = torch.rand(8, 8, generator=generator) * 0.02 - 0.01  # one pattern in every 8x8 cell
    stamped = texture + stamp.repeat(8, 8)
    # numpy reference: the mean over the batch and the cells of (image - its 9x9 local mean)
    local = ndimage.uniform_filter(stamped.numpy()[:, 0].astype(np.float64), (0, 9, 9), mode="constant")
    counts = ndimage.uniform_filter(np.ones((64, 64)), 9, mode="constant")
    detail = stamped.numpy()[:, 0] - local / counts
    reference = detail.reshape(4, 8, 8, 8, 8).mean(axis=(0, 1, 3))
    assert np.abs(grid_fingerprint(stamped, 8).numpy() - reference).max() < 1e-5
    # paired with the same texture unstamped, the loss sees the stamp alone, whatever the texture
    alone = grid_fingerprint(stamp.repeat(8, 8)[None, None], 8)
    assert float(grid_fingerprint_loss(stamped, texture, 8)) == pytest.approx(float(alone.abs().mean()), abs=1e-6)
    assert float(alone.abs().mean()) > 0.003 and float(grid_fingerprint_loss(texture, texture, 8)) == 0.0


def test_spectral_and_grid_weights_add_their_losses_to_the_decoders_loss():
    model = VQVAE(downsample=4, num_codes=8, code_dim=4, base_channels=8, hidden_channels=8, res_hidden=8)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    output = low_pass(x, 1.0)
    config = dict(data="unused", out="unused", epochs=1, init="unused", decoder_only=True)
    no_grad = torch.autocast("cpu", enabled=False)
    plain = float(vqvae_loss(model, Fixed(output), x, VQVAETraining(**config), no_grad)[0])
    weighted = float(vqvae_loss(model, Fixed(output), x, VQVAETraining(**config, spectral_weight=0.5), no_grad)[0])
    assert abs(weighted - plain - 0.5 * float(spectral_loss(output.clamp(0, 1), x))) < 1e-5
    gridded = float(vqvae_loss(model, Fixed(output), x, VQVAETraining(**config, grid_weight=2.0), no_grad)[0])
    assert abs(gridded - plain - 2.0 * float(grid_fingerprint_loss(output.clamp(0, 1), x, model.downsample))) < 1e-5


def test_free_background_only_forgives_outputs_below_zero_where_the_slice_is_zero():
    model = VQVAE(downsample=4, num_codes=8, code_dim=4, base_channels=8, hidden_channels=8, res_hidden=8)
    x = torch.zeros(1, 1, 16, 16)
    x[..., 4:12, 4:12] = 0.5
    shown = x.clone()  # exact where the head is; below 0 in the background: decode shows 0 there
    shown[..., :4, :] = -0.3
    output = shown.clone()
    output[..., 6, 6] = -0.2  # below 0 inside the head is an error either way
    config = dict(data="unused", out="unused", epochs=1, init="unused", decoder_only=True, pixel_loss="l1", ssim_weight=0.0)
    free = vqvae_loss(model, Fixed(output), x, VQVAETraining(free_background=True, **config), torch.autocast("cpu", enabled=False))[0]
    plain = vqvae_loss(model, Fixed(output), x, VQVAETraining(**config), torch.autocast("cpu", enabled=False))[0]
    assert torch.isclose(free, torch.tensor(0.7 / 256))  # only the in-head error counts
    assert plain > free
