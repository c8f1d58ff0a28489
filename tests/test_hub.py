"""Weights resolution without a network: a local directory, a pre-filled Hub cache, fallbacks."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import BUNDLED
from vqvae import hub
from vqvae.hub import ModelLoadError, load_model
from vqvae.model import VQVAE

ROOT = Path(__file__).resolve().parents[1]


def test_local_directory(tiny_weights):
    models = hub.load_models(str(tiny_weights), None)
    assert models.source.startswith("local directory") and models.vqvae.num_codes == 16
    assert models.code_frequencies is not None and models.code_frequencies.sum() == 136


def test_prefilled_hub_cache_is_used_when_the_network_fails(tiny_weights, tmp_path, monkeypatch):
    # Lay out a Hub cache entry by hand, exactly as huggingface_hub stores a download.
    cache = tmp_path / "hub"
    repo = cache / "models--someone--brainvq"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_weights, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    # Not offline mode: in offline mode the first (online) call already answers from the cache
    # and the fallback never runs. Here the online call fails as an unreachable network does.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    real = huggingface_hub.snapshot_download
    calls = []

    def snapshot_download(*args, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        if kwargs.get("local_files_only") is not True:
            raise ConnectionError("simulated: cannot reach huggingface.co")
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    path, source = hub.resolve_weights("someone/brainvq", bundled=tmp_path / "none")
    assert Path(path) == repo / "snapshots" / commit
    assert "someone/brainvq" in source and "(from the local cache)" in source
    # the online call was tried first and failed; the cache-only call answered
    assert len(calls) == 2 and calls[0] is not True and calls[1] is True
    calls.clear()
    models = hub.load_models("someone/brainvq", None)
    assert models.vqvae.num_codes == 16 and "(from the local cache)" in models.source
    assert len(calls) == 2


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
    assert models.realistic is not None and models.realistic.decoder.detail is not None  # shipped beside it
    x = torch.rand(2, 1, 256, 256)
    assert torch.equal(models.vqvae.encode(x), models.realistic.encode(x))  # the same codes: one prior for both


# Strict loading: a model directory whose weights do not match its config.json is an error
# naming the tensors, never a model with silently random (or ignored) layers.

def _vqvae_copy(tiny_weights, tmp_path, edit=None) -> Path:
    """A copy of the tiny VQ-VAE model directory, its tensors passed through ``edit``."""
    folder = tmp_path / "vqvae"
    shutil.copytree(tiny_weights / "vqvae", folder)
    if edit is not None:
        state = load_file(folder / hub.WEIGHTS)
        save_file(edit(dict(state)), folder / hub.WEIGHTS)
    return folder


def test_intact_copy_loads(tiny_weights, tmp_path):
    # the edits below are the only reason the other copies fail
    assert load_model(VQVAE, _vqvae_copy(tiny_weights, tmp_path)).num_codes == 16


def _without_encoder(state):
    kept = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    assert len(kept) < len(state)
    return kept


def test_missing_tensors_are_named(tiny_weights, tmp_path):
    folder = _vqvae_copy(tiny_weights, tmp_path, _without_encoder)
    with pytest.raises(ModelLoadError) as error:
        load_model(VQVAE, folder)
    assert "missing tensors" in str(error.value) and "encoder." in str(error.value)
    assert "unexpected" not in str(error.value) and "wrongly shaped" not in str(error.value)


def test_unexpected_tensors_are_named(tiny_weights, tmp_path):
    folder = _vqvae_copy(tiny_weights, tmp_path, lambda state: {**state, "stray.weight": torch.zeros(3)})
    with pytest.raises(ModelLoadError) as error:
        load_model(VQVAE, folder)
    assert "unexpected tensors" in str(error.value) and "stray.weight" in str(error.value)
    assert "missing" not in str(error.value)


def test_wrongly_shaped_tensors_are_named(tiny_weights, tmp_path):
    name = "quantizer.codebook"

    def reshaped(state):
        assert name in state
        return {**state, name: torch.zeros(state[name].shape[0] + 1, state[name].shape[1])}

    folder = _vqvae_copy(tiny_weights, tmp_path, reshaped)
    with pytest.raises(ModelLoadError) as error:
        load_model(VQVAE, folder)
    assert "wrongly shaped" in str(error.value) and name in str(error.value)
    assert "missing" not in str(error.value) and "unexpected" not in str(error.value)


def test_unknown_config_key_is_a_load_error(tiny_weights, tmp_path):
    folder = _vqvae_copy(tiny_weights, tmp_path)
    config = json.loads((folder / hub.CONFIG).read_text())
    (folder / hub.CONFIG).write_text(json.dumps({**config, "no_such_option": 3}))
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(VQVAE, folder)


def test_evaluate_cli_reports_a_broken_model_in_one_line(tiny_weights, tmp_path):
    folder = _vqvae_copy(tiny_weights, tmp_path, _without_encoder)
    (tmp_path / "data").mkdir()
    result = subprocess.run([sys.executable, "-m", "train.evaluate", "--model", str(folder),
                             "--data", str(tmp_path / "data")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "missing tensors" in result.stderr and "Traceback" not in result.stderr + result.stdout
    # one line says why (warnings printed by imported libraries may stand beside it)
    errors = [line for line in result.stderr.splitlines() if "missing tensors" in line]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.stderr


def test_a_realistic_decoder_on_the_same_codes_loads_beside_the_faithful_one(tiny_weights, tmp_path):
    from vqvae.model import VQVAE
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    faithful = hub.load_model(VQVAE, weights / "vqvae")
    realistic = VQVAE(**{**json.loads((weights / "vqvae" / "config.json").read_text()), "detail_channels": 4})
    realistic.load_state_dict(faithful.state_dict(), strict=False)
    realistic.save_pretrained(weights / hub.REALISTIC)
    models = hub.load_models(str(weights), None)
    assert models.realistic is not None and models.realistic.decoder.detail is not None
    with torch.no_grad():  # another encoder: its codes are not the prior's
        realistic.encoder.net[0].weight.add_(0.1)
    realistic.save_pretrained(weights / hub.REALISTIC)
    with pytest.raises(hub.ModelLoadError, match="encoder or codebook differs"):
        hub.load_models(str(weights), None)
    assert hub.load_models(str(tiny_weights), None).realistic is None  # optional


def test_the_prior_class_comes_from_its_config(tiny_weights, tmp_path):
    """A transformer prior in prior/ loads as one (app, train/ and push_to_hub all use load_prior);
    a config that fits no prior class is a one-line load error."""
    from vqvae.transformer import CodeTransformer
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    CodeTransformer(num_codes=16, channels=8, layers=1, heads=2, grid_size=8).save_pretrained(folder / "prior")
    models = hub.load_models(str(folder), None)
    assert isinstance(models.prior, CodeTransformer) and models.prior.grid_size == 8
    (folder / "prior" / hub.CONFIG).write_text(json.dumps({"num_codes": 16, "depth_of_field": 3}))
    with pytest.raises(ModelLoadError, match="none of the prior classes"):
        hub.load_prior(folder / "prior")
