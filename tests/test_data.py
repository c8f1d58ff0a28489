import numpy as np
import pytest
from PIL import Image

from vqvae.data import (DataError, list_images, load_folder, load_split, parse_oasis_name, read_slice,
                        split_dir)


def test_parse_oasis_name():
    assert parse_oasis_name("case_012_slice_7.nii.png") == (12, 7)
    assert parse_oasis_name("case_441_slice_31.nii.png") == (441, 31)
    assert parse_oasis_name("brain.png") is None


def test_split_dir_finds_release_layout_plain_split_and_flat_folder(oasis_like, tmp_path):
    assert split_dir(oasis_like, "train").name == "keras_png_slices_train"
    (tmp_path / "validate").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "validate" / "a.png")
    assert split_dir(tmp_path, "validate") == tmp_path / "validate"
    flat = tmp_path / "validate"
    assert split_dir(flat, "test") == flat  # a folder that directly holds images
    with pytest.raises(DataError, match="no 'test' split"):
        split_dir(oasis_like, "test")
    with pytest.raises(DataError, match="not found"):
        split_dir(tmp_path / "missing", "train")


def test_list_images_natural_order(tmp_path):
    for k in (10, 2, 1):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"case_001_slice_{k}.nii.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(tmp_path)] == [
        "case_001_slice_1.nii.png", "case_001_slice_2.nii.png", "case_001_slice_10.nii.png"]


def test_read_slice_converts_modes_and_names_bad_files(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_slice(tmp_path / "rgb.png", size=16).max() > 0
    deep = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 200)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_slice(tmp_path / "deep.png", size=16)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    (tmp_path / "fake.png").write_text("this is text")
    with pytest.raises(DataError, match="fake.png"):
        read_slice(tmp_path / "fake.png")
    with pytest.raises(DataError, match="expected 256x256, got 16x16"):
        read_slice(tmp_path / "rgb.png", size=256)


def test_load_split_preloads_uint8_with_metadata(oasis_like, capsys):
    split = load_split(oasis_like, "train")
    assert split.images.shape == (12, 1, 256, 256) and split.images.dtype.is_floating_point is False
    assert split.subjects.tolist()[:5] == [1, 1, 1, 1, 2]
    assert split.positions.tolist()[:5] == [0, 1, 2, 3, 0]
    batch = split.batch([0, 1])
    assert batch.dtype.is_floating_point and 0 <= batch.min() and batch.max() <= 1
    assert "read 12 images from" in capsys.readouterr().out


def test_load_folder_rejects_mixed_sizes(tmp_path):
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match="b.png"):
        load_folder(tmp_path, progress=False)
