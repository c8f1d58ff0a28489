import numpy as np
import pytest
from PIL import Image

from vqvae.data import (DataError, list_images, load_folder, load_split, parse_oasis_name, read_slice,
                        split_dir)
from vqvae.testing import write_split


def test_parse_oasis_name():
    assert parse_oasis_name("case_012_slice_7.nii.png") == (12, 7)
    assert parse_oasis_name("case_441_slice_31.nii.png") == (441, 31)
    assert parse_oasis_name("brain.png") is None


def test_split_dir_finds_release_layout_and_plain_split(oasis_like, tmp_path):
    assert split_dir(oasis_like, "train").name == "keras_png_slices_train"
    (tmp_path / "validate").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "validate" / "a.png")
    assert split_dir(tmp_path, "validate") == tmp_path / "validate"
    with pytest.raises(DataError, match="no 'test' split"):
        split_dir(oasis_like, "test")
    with pytest.raises(DataError, match="not found"):
        split_dir(tmp_path / "missing", "train")


def _paths(split):
    return [p.name for p in split.paths]


def test_flat_folder_is_split_by_subject_not_used_whole(tmp_path):
    """Images directly in --data: validate holds whole subjects that train never sees (the old
    code gave every split the whole folder, so validation ran on training images)."""
    flat = tmp_path / "flat"
    write_split(flat, range(1, 11), 2, np.random.default_rng(0), size=32)
    told = r"split by subject .*9 of 10 subjects -> train \(18 images\), 1 -> validate \(2 images\)"
    with pytest.warns(UserWarning, match=told):
        train = load_split(flat, "train", size=32, progress=False)
    with pytest.warns(UserWarning, match=told):
        validate = load_split(flat, "validate", size=32, progress=False)
    assert len(train) == 18 and len(validate) == 2
    assert not set(train.subjects.tolist()) & set(validate.subjects.tolist())
    assert sorted(_paths(train) + _paths(validate)) == sorted(p.name for p in list_images(flat))
    assert len(load_folder(flat, size=32, progress=False)) == 20  # reconstruction still reads it all
    with pytest.raises(DataError, match="split only into train and validate.*--split validate"):
        load_split(flat, "test", size=32, progress=False)


def test_flat_folder_split_is_deterministic_and_stable(tmp_path):
    flat = tmp_path / "flat"
    write_split(flat, range(1, 11), 2, np.random.default_rng(0), size=32)
    with pytest.warns(UserWarning):
        first = [_paths(load_split(flat, s, size=32, progress=False)) for s in ("train", "validate")]
        again = [_paths(load_split(flat, s, size=32, progress=False)) for s in ("train", "validate")]
    assert first == again
    write_split(flat, [11, 12], 2, np.random.default_rng(1), size=32)  # more subjects move no one
    with pytest.warns(UserWarning, match="of 12 subjects"):
        grown = [_paths(load_split(flat, s, size=32, progress=False)) for s in ("train", "validate")]
    assert set(first[0]) <= set(grown[0]) and set(first[1]) <= set(grown[1])


def test_flat_folder_without_subjects_is_split_by_file_name(tmp_path):
    for i in range(10):
        Image.fromarray(np.full((32, 32), i, np.uint8)).save(tmp_path / f"brain_{i}.png")
    with pytest.warns(UserWarning, match=r"split by file name .*of 10 files"):
        train = load_split(tmp_path, "train", size=32, progress=False)
    with pytest.warns(UserWarning):
        validate = load_split(tmp_path, "validate", size=32, progress=False)
    assert len(train) and len(validate) and not set(_paths(train)) & set(_paths(validate))
    assert sorted(_paths(train) + _paths(validate)) == sorted(f"brain_{i}.png" for i in range(10))
    assert validate.subjects.tolist() == [-1] * len(validate)


def test_flat_folder_too_small_to_split_says_so(tmp_path):
    write_split(tmp_path, [1], 3, np.random.default_rng(0), size=32)  # one subject: one side empty
    for split in ("train", "validate"):
        with pytest.raises(DataError, match=r"too small to split by subject: 1 of 1 subjects .*validate would "
                                            r"be empty; make .*train/ and .*validate/ sub-folders"):
            load_split(tmp_path, split, size=32, progress=False)


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
