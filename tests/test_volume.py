"""Volumes written as NIfTI read back through the app's own reader, slice for slice."""
import numpy as np

from tests.strict import import_or_skip
from vqvae.testing import synthetic_slice
from vqvae.upload import NiftiVolume
from vqvae.volume import strip, write_nifti


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
