"""Weights resolution without a network: a local directory, a pre-filled Hub cache, fallbacks."""
import shutil

import pytest

from tests.conftest import BUNDLED
from vqvae import hub


def test_local_directory(tiny_weights):
    models = hub.load_models(str(tiny_weights), None)
    assert models.source.startswith("local directory") and models.vqvae.num_codes == 16
    assert models.code_frequencies is not None and models.code_frequencies.sum() == 136


def test_prefilled_hub_cache_is_used_offline(tiny_weights, tmp_path, monkeypatch):
    # Lay out a Hub cache entry by hand, exactly as huggingface_hub stores a download.
    cache = tmp_path / "hub"
    repo = cache / "models--someone--brainvq"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_weights, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    path, source = hub.resolve_weights("someone/brainvq", bundled=tmp_path / "none")
    assert path == repo / "snapshots" / commit and "someone/brainvq" in source
    assert hub.load_models("someone/brainvq", None).vqvae.num_codes == 16


def test_unreachable_repo_falls_back_to_bundled(tiny_weights, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    path, source = hub.resolve_weights("someone/missing", bundled=tiny_weights)
    assert path == tiny_weights and source.startswith("bundled")
    assert "using the bundled weights" in caplog.text


def test_no_weights_anywhere_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no bundled weights"):
        hub.resolve_weights(None, bundled=tmp_path)


def test_bundled_weights_load_when_shipped():
    models = hub.load_models(None, BUNDLED)
    assert models.source.startswith("bundled") and models.vqvae.num_codes == models.prior.num_codes
