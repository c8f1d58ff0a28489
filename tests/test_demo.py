"""The app's functions, without a browser: uploads, reconstruction, code map, sampling."""
import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from tests.strict import import_or_skip
from vqvae import demo, upload
from vqvae.images import to_uint8
from vqvae.prior import GatedPixelCNN
from vqvae.testing import BAD_UPLOADS, GOOD_UPLOADS, synthetic_slice, write
from vqvae.upload import InputError


def save(tmp_path, name, array, **kw):
    path = tmp_path / name
    Image.fromarray(array).save(path, **kw)
    return path


def test_fit_to_square_pads_then_resizes():
    same, note = upload.fit_to_square(np.zeros((256, 256), np.uint8))
    assert note.endswith("used as is")
    wide = np.full((100, 200), 255, np.uint8)
    out, note = upload.fit_to_square(wide)
    assert out.shape == (256, 256) and "padded" in note and "resized" in note
    assert out[0, 128] == 0 and out[128, 128] == 255  # black bands above and below


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_read_upload_accepts_common_modes(tmp_path, mode):
    base = synthetic_slice(np.random.default_rng(0), 256)
    image = Image.fromarray(base.astype(np.uint16) * 256) if mode == "I;16" else Image.fromarray(base).convert(mode)
    path = tmp_path / f"slice_{mode.replace(';', '')}.png"
    image.save(path)
    out, note, count, _ = upload.read_upload(path)
    assert out.shape == (256, 256) and out.dtype == np.uint8 and count == 1
    if mode == "I;16":  # deep images are stretched from their own min..max to 0..255
        base = np.round(base * (255 / base.max()))
    assert np.abs(out.astype(int) - base).max() <= 2


def test_read_upload_jpeg_and_small_image(tmp_path):
    out, note, *_ = upload.read_upload(save(tmp_path, "a.jpg", synthetic_slice(np.random.default_rng(1), 128)))
    assert out.shape == (256, 256) and "resized" in note


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"hello, I am text", "not a readable PNG or JPEG"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01", "not a readable PNG or JPEG"),
])
def test_read_upload_bad_files_give_clear_messages(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        upload.read_upload(path)


def test_read_upload_refuses_huge_and_tiny_images(tmp_path):
    # decompression bombs: small files that decode to 81 and 400 megapixels
    for side in (9000, 20000):
        bomb = tmp_path / f"bomb{side}.png"
        Image.new("L", (side, side)).save(bomb)
        assert bomb.stat().st_size < 2**20
        with pytest.raises(InputError, match="megapixels"):
            upload.read_upload(bomb)
    with pytest.raises(InputError, match="only 1x1"):
        upload.read_upload(save(tmp_path, "dot.png", np.zeros((1, 1), np.uint8)))
    with pytest.raises(InputError, match="upload a slice"):
        upload.read_upload(None)


def nifti(tmp_path, data, name="v.nii.gz"):
    nibabel = import_or_skip("nibabel")
    path = tmp_path / name
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_nifti_volume_slices(tmp_path):
    volume = np.random.default_rng(0).random((64, 64, 10)).astype(np.float32)
    path = nifti(tmp_path, volume)
    image, note, count, index = upload.read_upload(path, slice_index=3)
    assert count == 10 and index == 3 and image.shape == (256, 256) and "slice 3 of 10" in note
    assert upload.read_upload(path, slice_index=99)[3] == 9
    assert upload.read_upload(path)[3] == 5  # the middle slice by default


def test_nifti_faults(tmp_path):
    bad = np.ones((8, 8, 4), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        upload.read_upload(nifti(tmp_path, bad, "nan.nii"))
    with pytest.raises(InputError, match="3-D"):
        upload.read_upload(nifti(tmp_path, np.ones((8, 8, 4, 3), np.float32), "4d.nii"))
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not nifti"))
    with pytest.raises(InputError, match="not a readable NIfTI"):
        upload.read_upload(tmp_path / "junk.nii.gz")


def test_a_read_only_upload_array_becomes_a_batch_without_a_warning():
    import warnings
    from vqvae.images import slice_tensor
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    image.flags.writeable = False  # as decoded uploads can be
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = slice_tensor(image)
    assert batch.shape == (1, 1, 3, 4) and torch.equal(batch[0, 0], torch.from_numpy(image.copy()).float() / 255)


def test_reconstruct_slice_with_searched_codes(tiny_models):
    """Searched codes decode at least as well as the encoder's, which stay on hand ("encoded")
    for the prior's surprise map."""
    image = synthetic_slice(np.random.default_rng(2), 256)
    nearest = demo.reconstruct_slice(tiny_models.vqvae, image)
    searched = demo.reconstruct_slice(tiny_models.vqvae, image, search=True)
    assert np.array_equal(searched["encoded"], nearest["codes"]) and np.array_equal(nearest["encoded"], nearest["codes"])
    assert searched["metrics"]["ssim"] >= nearest["metrics"]["ssim"] - 1e-4


def test_reconstruct_slice_and_code_views(tiny_models):
    image = synthetic_slice(np.random.default_rng(2), 256)
    result = demo.reconstruct_slice(tiny_models.vqvae, image)
    assert result["reconstruction"].shape == (256, 256) and result["error"].shape == (256, 256, 3)
    assert result["codes"].shape == (32, 32)
    assert set(result["metrics"]) >= {"ssim", "ssim_brain", "psnr"}
    colours = demo.code_colours(tiny_models.vqvae)
    assert colours.shape == (tiny_models.vqvae.num_codes, 3) and colours.dtype == np.uint8
    coloured = demo.code_map(result["codes"], colours)
    assert coloured.shape == (256, 256, 3)
    assert (coloured[:8, :8] == colours[result["codes"][0, 0]]).all()  # one cell, one code's colour
    code = int(result["codes"][0, 0])
    overlay = demo.highlight_code(image, result["codes"], code)
    assert (overlay[:8, :8, 0] > overlay[:8, :8, 1]).all()  # that cell is tinted red
    assert demo.decode_code(tiny_models.vqvae, code, 32).shape == (256, 256)
    with pytest.raises(InputError, match="from 0 to"):
        demo.decode_code(tiny_models.vqvae, 10**6, 32)
    rows = demo.code_usage(result["codes"], np.ones(tiny_models.vqvae.num_codes))
    assert rows[0]["source"] == "this slice" and rows[1]["source"] == "training set"


def test_code_colours_follow_what_codes_decode_to(tiny_models):
    """Brightness of a code's colour orders codes as their decoded intensity does."""
    import torch
    vqvae = tiny_models.vqvae
    colours = demo.code_colours(vqvae).astype(float)
    decoded = vqvae.decode(torch.arange(vqvae.num_codes)[:, None, None].expand(-1, 4, 4)).mean(dim=(1, 2, 3))
    darkest, brightest = int(decoded.argmin()), int(decoded.argmax())
    assert colours[brightest].max() > colours[darkest].max()


def test_code_at_and_most_used_code():
    codes = np.zeros((32, 32), np.int64)
    codes[3, 5] = 7
    assert demo.code_at(codes, x=5 * 8 + 4, y=3 * 8 + 1) == 7  # x is the column, y the row
    assert demo.code_at(codes, x=300, y=-4) == 0  # clicks off the edge clamp to the grid
    codes[4:30] = 4  # 832 of 1024 cells
    assert demo.most_used_code(codes) == 4


def test_sample_stream_yields_progress_and_final_images(tiny_models):
    updates = list(demo.sample_stream(tiny_models, 2, seed=3, every=8))
    assert [rows for _, rows, _ in updates] == [8, 16, 24, 32]
    first, last = updates[0][0], updates[-1][0]
    assert len(last) == 2 and last[0].shape == (256, 256)
    assert (first[0][64:] == 0).all()  # rows not yet sampled are shown black


def test_sample_stream_matches_the_sampler(tiny_models):
    from vqvae.sampling import sample_cached
    *_, (images, _, _) = demo.sample_stream(tiny_models, 1, seed=5, position=3)
    codes = sample_cached(tiny_models.prior, 1, positions=torch.tensor([3]), generator=torch.Generator().manual_seed(5))
    assert np.array_equal(images[0], to_uint8(tiny_models.vqvae.decode(codes)[0, 0]))


def test_sample_stream_passes_the_slice_position_on(tiny_models):
    """The tiny prior's position embeddings are random (tests/conftest.py), so a stream that
    dropped the position would match neither the other position nor the sampler above."""
    prior = tiny_models.prior
    assert all(layer.condition.weight.abs().sum() > 0 for layer in prior.layers)  # else position is a no-op
    last = {}
    for position in (3, 20, None):
        *_, (images, _, _) = demo.sample_stream(tiny_models, 2, seed=5, position=position)
        last[position] = np.stack(images)
    assert not np.array_equal(last[3], last[20])
    assert not np.array_equal(last[3], last[None]) and not np.array_equal(last[20], last[None])
    *_, (again, _, _) = demo.sample_stream(tiny_models, 2, seed=5, position="3")  # a form's string
    assert np.array_equal(np.stack(again), last[3])


def slice_codes(tiny_models) -> np.ndarray:
    """A real slice's code grid, as completion gets it from the app."""
    return demo.reconstruct_slice(tiny_models.vqvae, synthetic_slice(np.random.default_rng(4), 256))["codes"]


def test_completion_keeps_the_initial_rows_in_the_codes(tiny_models):
    from vqvae.sampling import sample_cached
    initial = torch.from_numpy(slice_codes(tiny_models)).long()
    grids = [sample_cached(tiny_models.prior, 3, initial=initial[None].expand(3, -1, -1), keep_rows=16,
                           generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    for codes in grids:
        assert codes.shape == (3, 32, 32)
        assert torch.equal(codes[:, :16], initial[:16].expand(3, -1, -1))  # kept exactly
        assert not torch.equal(codes[:, 16:], initial[16:].expand(3, -1, -1))  # the rest is sampled
    assert not torch.equal(grids[0][:, 16:], grids[1][:, 16:])


def test_completion_keeps_the_initial_rows_in_the_images(tiny_models):
    """Through the app's stream: two seeds give pixel-identical tops and different bottoms. The
    decoder is convolutional: a code row reaches a few code rows up (a 3x3 convolution and two
    3x3 residual blocks, then the upsampling), so only pixel rows above (16 - 4) * 8 are
    compared, and only rows below (16 + 1) * 8 must differ."""
    initial = slice_codes(tiny_models)
    runs = []
    for seed in (1, 2):
        updates = list(demo.sample_stream(tiny_models, 2, initial=initial, keep_rows=16, seed=seed))
        assert [rows for _, rows, _ in updates] == [16, 24, 32]  # the kept part, then sampled rows
        runs.append(np.stack(updates[-1][0]))
    first, second = runs
    assert first.shape == (2, 256, 256)
    top, bottom = (16 - 4) * 8, (16 + 1) * 8
    assert np.array_equal(first[:, :top], second[:, :top])
    # and that top is the slice's own: the kept codes decode to it
    kept = tiny_models.vqvae.decode(torch.from_numpy(initial)[None].long())
    assert np.array_equal(first[0, :top], to_uint8(kept[0, 0])[:top])
    for a, b in zip(first, second):
        assert not np.array_equal(a[bottom:], b[bottom:])


def test_sample_stream_passes_the_guidance_on(tiny_models):
    from vqvae.sampling import sample_cached
    *_, (images, _, _) = demo.sample_stream(tiny_models, 2, seed=5, position=3, guidance="2.5")  # a form's string
    codes = sample_cached(tiny_models.prior, 2, positions=torch.tensor([3, 3]), guidance=2.5,
                          generator=torch.Generator().manual_seed(5))
    assert np.array_equal(np.stack(images), to_uint8(tiny_models.vqvae.decode(codes)[:, 0]))
    *_, (plain, _, _) = demo.sample_stream(tiny_models, 2, seed=5, position=3)
    assert not np.array_equal(np.stack(images), np.stack(plain))


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "from 1 to 16"), ({"n": 2, "temperature": -1}, "temperature must be from 0"),
    ({"n": 2, "guidance": 11}, "guidance must be from 0"),
    ({"n": 2, "position": 40}, "slice position"), ({"n": 2, "keep_rows": 40, "initial": np.zeros((32, 32))}, "rows to keep"),
])
def test_sample_stream_rejects_bad_settings(tiny_models, kwargs, message):
    with pytest.raises(InputError, match=message):
        next(demo.sample_stream(tiny_models, **kwargs))


# Form fields arrive as None (a cleared Number), floats, ints of any size, or strings.
BAD_FIELDS = [
    ({"n": None}, "number of samples is empty"),
    ({"n": 2.5}, "number of samples must be a whole number"),
    ({"n": "many"}, "number of samples must be a whole number"),
    ({"n": 17}, "number of samples must be from 1 to 16"),
    ({"seed": None}, "seed is empty"),
    ({"seed": ""}, "seed is empty"),
    ({"seed": -1}, "seed must be from 0 to"),
    ({"seed": 2**63}, "seed must be from 0 to"),
    ({"seed": 2**64}, "seed must be from 0 to"),
    ({"seed": 10**30}, "seed must be from 0 to"),
    ({"seed": "abc"}, "seed must be a whole number"),
    ({"seed": float("inf")}, "seed must be a whole number"),
    ({"seed": 0.5}, "seed must be a whole number"),
    ({"temperature": None}, "temperature is empty"),
    ({"temperature": float("nan")}, "temperature must be from 0"),
    ({"temperature": float("inf")}, "temperature must be from 0"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"top_k": None}, "top-k is empty"),
    ({"top_k": 1.5}, "top-k must be a whole number"),
    ({"top_k": -1}, "top-k must be from 0"),
    ({"top_k": 10**6}, "top-k must be from 0"),
    ({"position": -1}, "slice position must be from 0"),
    ({"position": 2.5}, "slice position must be a whole number"),
    ({"position": "k"}, "slice position must be a whole number"),
    ({"initial": np.zeros((32, 32)), "keep_rows": None}, "rows to keep is empty"),
    ({"initial": np.zeros((32, 32)), "keep_rows": 1.5}, "rows to keep must be a whole number"),
    ({"initial": np.zeros((16, 16)), "keep_rows": 8}, "code grid"),
]


@pytest.mark.parametrize("kwargs, message", BAD_FIELDS, ids=[f"{k}={v!r}"[:40] for kw, _ in BAD_FIELDS
                                                              for k, v in list(kw.items())[-1:]])
def test_every_sampling_field_is_checked_into_one_line(tiny_models, kwargs, message):
    settings = {"n": 2, "temperature": 1.0, "top_k": 0, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=message) as caught:
        next(demo.sample_stream(tiny_models, **settings))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("kwargs", [
    {"seed": 0}, {"seed": "7"}, {"seed": 7.0}, {"n": "2"}, {"top_k": 16}, {"top_k": "3"},
    {"temperature": 0}, {"temperature": "0.5"}, {"position": 0}, {"position": 31}, {"position": "5"},
], ids=lambda kw: "-".join(f"{k}={v!r}" for k, v in kw.items()))
def test_valid_sampling_fields_in_form_shapes_are_accepted(tiny_models, kwargs):
    images, rows, total = next(demo.sample_stream(tiny_models, **{"n": 1, **kwargs}))
    assert rows == 8 and total == 32


def test_large_seeds_are_taken_exactly():
    """Every seed in 0..2**63-1 is valid and distinct (a float on the way would round those
    above 2**53: 2**63 - 1 refused, 2**53 + 1 taken as 2**53)."""
    assert demo.whole_number(2**63 - 1, "seed", 0, demo.MAX_SEED) == 2**63 - 1
    assert demo.whole_number(2**53 + 1, "seed", 0, demo.MAX_SEED) == 2**53 + 1
    assert demo.whole_number(str(2**63 - 1), "seed", 0, demo.MAX_SEED) == 2**63 - 1


@pytest.mark.parametrize("kind, name, make, message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_every_bad_upload_gets_a_clear_message(tmp_path, kind, name, make, message):
    if name.endswith(".nii.gz") and "garbage" not in kind:
        import_or_skip("nibabel")
    with pytest.raises(InputError, match=message):
        upload.read_upload(write(tmp_path, name, make))


@pytest.mark.parametrize("kind, name, make", GOOD_UPLOADS, ids=[g[0] for g in GOOD_UPLOADS])
def test_unusual_but_valid_uploads_work(tmp_path, kind, name, make):
    image, note, _, _ = upload.read_upload(write(tmp_path, name, make))
    assert image.shape == (256, 256) and image.dtype == np.uint8


@pytest.fixture(scope="module")
def two_decoders(tiny_weights, tmp_path_factory):
    """The tiny weights plus a realistic decoder on the same codes, its detail head drawing."""
    import json
    import shutil
    from vqvae.hub import REALISTIC, load_model, load_models
    from vqvae.model import VQVAE
    weights = tmp_path_factory.mktemp("two_decoders")
    shutil.copytree(tiny_weights, weights, dirs_exist_ok=True)
    faithful = load_model(VQVAE, weights / "vqvae")
    settings = json.loads((weights / "vqvae" / "config.json").read_text())
    realistic = VQVAE(**{**settings, "detail_channels": 4, "detail_blocks": 1})
    realistic.load_state_dict(faithful.state_dict(), strict=False)
    torch.manual_seed(0)
    with torch.no_grad():  # a head that always draws something, whatever the image
        realistic.decoder.detail.out[1].weight.normal_(std=0.2)
        realistic.decoder.detail.out[1].bias.fill_(0.1)
    realistic.save_pretrained(weights / REALISTIC)
    return load_models(str(weights), None)


def test_both_decoders_draw_the_same_codes(two_decoders):
    image = synthetic_slice(np.random.default_rng(4), 256)
    faithful = demo.reconstruct_slice(two_decoders.vqvae, image)
    realistic = demo.reconstruct_slice(two_decoders.realistic, image)
    assert np.array_equal(faithful["codes"], realistic["codes"])
    assert not np.array_equal(faithful["reconstruction"], realistic["reconstruction"])
    assert demo.decoder(two_decoders, None) is two_decoders.realistic  # realistic by default
    assert demo.decoder(two_decoders, "faithful") is two_decoders.vqvae
    with pytest.raises(InputError, match="decoder must be one of"):
        demo.decoder(two_decoders, "sharp")


def test_sampling_decodes_with_the_chosen_decoder(two_decoders, tiny_models):
    *_, (drawn, _, _) = demo.sample_stream(two_decoders, 1, seed=3, decoder_name="realistic")
    *_, (plain, _, _) = demo.sample_stream(two_decoders, 1, seed=3, decoder_name="faithful")
    assert not np.array_equal(drawn[0], plain[0])
    *_, (only, _, _) = demo.sample_stream(tiny_models, 1, seed=3, decoder_name="realistic")
    assert np.array_equal(only[0], plain[0])  # weights without a realistic decoder: the faithful one


def test_sampling_draws_the_detail_only_on_the_finished_grids(two_decoders):
    """Frames shown while the grid fills are drafts (the decoder below its detail head: the
    faithful decoder's image); the last one is the realistic decoder's."""
    realistic = list(demo.sample_stream(two_decoders, 2, seed=3, decoder_name="realistic", every=8))
    faithful = list(demo.sample_stream(two_decoders, 2, seed=3, decoder_name="faithful", every=8))
    for (drawn, rows, total), (plain, _, _) in zip(realistic, faithful):
        assert all(np.array_equal(a, b) for a, b in zip(drawn, plain)) == (rows < total)


def test_volume_stream_needs_a_volume_prior_and_fills_slice_by_slice(tiny_models, tiny_weights, tmp_path):
    import shutil
    from vqvae.hub import VOLUME_PRIOR, load_models
    with pytest.raises(InputError, match="no volume prior"):
        next(demo.volume_stream(tiny_models))
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    GatedPixelCNN(num_codes=16, channels=8, layers=2, num_positions=4, previous_slice=4).save_pretrained(
        weights / VOLUME_PRIOR)
    models = load_models(str(weights), None)
    updates = [(len(slices), done, total) for slices, done, total in demo.volume_stream(models, seed=2)]
    assert updates == [(1, 1, 4), (2, 2, 4), (3, 3, 4), (4, 4, 4)]
    *_, (slices, _, _) = demo.volume_stream(models, seed=2)
    again = list(demo.volume_stream(models, seed=2))[-1][0]
    assert all(np.array_equal(a, b) for a, b in zip(slices, again))  # a seed gives one volume


def test_reconstruct_volume_covers_every_slice(tiny_models, tmp_path):
    nibabel = import_or_skip("nibabel")
    data = np.random.default_rng(0).random((64, 48, 3)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), str(tmp_path / "v.nii.gz"))
    rebuilt, note = demo.reconstruct_volume(tiny_models.vqvae, tmp_path / "v.nii.gz")
    assert rebuilt.shape == (3, 256, 256) and rebuilt.dtype == np.uint8 and "3 slices of 64x48" in note
    single, *_ = upload.read_upload(tmp_path / "v.nii.gz", slice_index=1)  # one rule for a slice and a volume
    alone = demo.reconstruct_slice(tiny_models.vqvae, single)["reconstruction"]
    difference = np.abs(rebuilt[1].astype(int) - alone.astype(int))
    # a batch of 3 and a batch of 1 may take different convolution kernels: on an AVX2-only CPU one
    # pixel in 65 536 rounded to the next grey level; a different rule would move most pixels
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_surprise_view_totals_the_per_code_bits_and_maps_the_regional_surprise(tiny_models):
    from vqvae.surprise import heat_map, regional_surprise, surprise_and_expected
    image = synthetic_slice(np.random.default_rng(6), 256)
    codes = demo.reconstruct_slice(tiny_models.vqvae, image)["codes"]
    heat, text = demo.surprise_view(tiny_models, image, codes)
    bits, expected = (t[0].numpy() for t in surprise_and_expected(tiny_models.prior, torch.from_numpy(codes)[None]))
    assert heat.shape == (256, 256, 3) and f"{bits.sum():.0f} bits" in text
    assert np.array_equal(heat, heat_map(regional_surprise(bits, expected), image, full_scale=demo.REGION_FULL_SCALE))


def test_image_sizes_are_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    """The limits hold without Pillow's own bomb check and before any pixel is decoded."""
    from PIL import Image as PILImage

    def never(*args, **kwargs):
        raise AssertionError("pixels were decoded before the size check")
    for side, name in ((9000, "big.png"), ((200000, 8), "strip.png")):
        PILImage.new("L", side if isinstance(side, tuple) else (side, side)).save(tmp_path / name)
    monkeypatch.setattr(PILImage.Image, "load", never)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(InputError, match="megapixels"):
        upload.read_upload(tmp_path / "big.png")
    with pytest.raises(InputError, match="at most 8192"):
        upload.read_upload(tmp_path / "strip.png")


def test_surprise_is_conditioned_on_the_position_the_network_reads(tiny_models):
    import dataclasses
    from vqvae.generation import SliceCNN
    from vqvae.surprise import code_surprise
    torch.manual_seed(0)
    reader = SliceCNN(num_classes=4, width=8, feature_dim=8).eval()
    models = dataclasses.replace(tiny_models, position_net=reader)
    image = synthetic_slice(np.random.default_rng(7), 256)
    codes = demo.reconstruct_slice(models.vqvae, image)["codes"]
    k = int(reader(torch.from_numpy(image)[None, None]).argmax(1))
    _, text = demo.surprise_view(models, image, codes)
    total = code_surprise(models.prior, torch.from_numpy(codes)[None], torch.tensor([k]))[0].sum().item()
    assert f"at slice position {k}" in text and f"{total:.0f} bits" in text


@pytest.mark.parametrize("kind", ["attention", "transformer"])
def test_global_context_priors_sample_complete_and_score_in_the_app(tiny_models, kind):
    """The app's sampling (with a slice position and completion) and surprise map work with
    either global-context prior, and the stream gives exactly the cached sampler's codes."""
    import dataclasses

    from vqvae.sampling import sample_cached
    from vqvae.transformer import CodeTransformer
    torch.manual_seed(0)
    if kind == "attention":
        prior = GatedPixelCNN(num_codes=16, channels=8, layers=2, attention_every=1)
        torch.nn.init.normal_(prior.attention["0"].out.weight)
    else:
        prior = CodeTransformer(num_codes=16, channels=8, layers=1, heads=2)
    models = dataclasses.replace(tiny_models, prior=prior.eval())
    initial = slice_codes(tiny_models)
    *_, (images, rows, total) = demo.sample_stream(models, 2, seed=1, position=3, initial=initial, keep_rows=16)
    assert rows == total == 32
    codes = sample_cached(prior, 2, positions=torch.full((2,), 3), keep_rows=16,
                          initial=torch.from_numpy(initial).long()[None].expand(2, -1, -1),
                          generator=torch.Generator().manual_seed(1))
    assert torch.equal(codes[:, :16], torch.from_numpy(initial[:16]).long()[None].expand(2, -1, -1))
    assert np.array_equal(np.stack(images), to_uint8(tiny_models.vqvae.decode(codes)[:, 0]))
    image = synthetic_slice(np.random.default_rng(4), 256)
    heat, text = demo.surprise_view(models, image, initial)
    assert heat.shape[:2] == (256, 256) and "bits for the whole slice" in text
