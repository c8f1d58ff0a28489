"""Volumes written as NIfTI read back through the app's own reader, slice for slice."""
import numpy as np

from tests.strict import import_or_skip
from vqvae.testing import synthetic_slice
from vqvae.upload import NiftiVolume
from vqvae.volume import real_volumes, strip, volume_similarity, write_nifti


def test_a_written_volume_reads_back_the_same_slices_in_the_same_orientation(tmp_path):
    import_or_skip("nibabel")
    rng = np.random.default_rng(0)
    volume = np.stack([synthetic_slice(rng, 256) for _ in range(5)])
    volume[0, 0, 0], volume[1, 10, 200] = 255, 0  # the full range: the reader's scaling is the identity
    volume[2, :40, :20] = 200  # an asymmetric mark: a flip or a rotation would move it
    path = write_nifti(volume, tmp_path / "v.nii.gz")
    read = NiftiVolume(path)
    assert read.shape == (256, 256, 5)
    for k in range(5):
        assert np.array_equal(read.slice_uint8(k), volume[k])
    import nibabel
    header = nibabel.load(str(path)).header
    assert header.get_data_dtype() == np.uint8 and tuple(header.get_zooms()) == (1.0, 1.0, 1.0)


def test_strip_shows_every_fourth_slice():
    volume = np.arange(8)[:, None, None].repeat(4, 1).repeat(4, 2).astype(np.uint8)
    assert strip(volume).shape == (4, 8) and strip(volume)[0].tolist() == [0] * 4 + [4] * 4


def test_volume_similarity_calls_copies_coherent_and_noise_not():
    rng = np.random.default_rng(1)
    head = synthetic_slice(rng, 64)
    copies = np.stack([head] * 6)[None]
    assert volume_similarity(copies)["consecutive_ssim"] > 0.999
    assert volume_similarity(copies)["first_last_ssim"] > 0.999
    noise = rng.integers(0, 256, (1, 6, 64, 64)).astype(np.uint8)
    assert volume_similarity(noise)["consecutive_ssim"] < 0.1


def test_real_volumes_regroup_a_split_by_subject_in_slice_order():
    import torch
    images = torch.arange(6, dtype=torch.uint8)[:, None, None, None].expand(6, 1, 2, 2).clone()
    subjects, positions = torch.tensor([7, 7, 7, 9, 9, 8]), torch.tensor([2, 0, 1, 1, 0, 0])
    volumes = real_volumes(images, subjects, positions)  # subjects 8 and 9 lack position 2
    assert volumes.shape == (1, 3, 2, 2) and volumes[0, :, 0, 0].tolist() == [1, 2, 0]
