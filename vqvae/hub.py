"""Where the app's weights come from: a Hugging Face Hub repo, a local directory, or the copy
bundled under assets/models.

A weights repo (or directory) holds two model directories in the Hub layout:
``vqvae/`` and ``prior/`` (each config.json + model.safetensors); ``prior/`` may also hold
``code_frequencies.json``, the training frequency of each code, for the app's histogram.
Resolution order: a local directory; the Hub (through huggingface_hub's cache); the Hub cache
alone when the network is unreachable; finally the bundled copy. The caller is told which.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from .demo import Models
from .model import VQVAE
from .prior import GatedPixelCNN

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "models"
FREQUENCIES = "code_frequencies.json"
log = logging.getLogger("brainvq")


def from_pretrained(cls, path: str | Path):
    """``cls.from_pretrained`` without huggingface_hub's "Loading weights from..." print, which
    would corrupt machine-readable output such as ``train.evaluate --json``."""
    with contextlib.redirect_stdout(io.StringIO()):
        return cls.from_pretrained(str(path)).eval()


def is_weights_dir(path: Path) -> bool:
    return all((path / name / "model.safetensors").is_file() for name in ("vqvae", "prior"))


def resolve_weights(source: str | None, bundled: Path = BUNDLED) -> tuple[Path, str]:
    """-> (directory holding vqvae/ and prior/, a description of where it came from)."""
    if source:
        path = Path(source).expanduser()
        if path.is_dir():
            if is_weights_dir(path):
                return path, f"local directory {path}"
            log.warning("%s lacks vqvae/ and prior/ model directories; using the bundled weights", path)
        else:
            from huggingface_hub import snapshot_download
            patterns = ["vqvae/*", "prior/*", "*.md"]
            try:
                return Path(snapshot_download(source, allow_patterns=patterns)), f"Hub repo {source}"
            except Exception as error:  # offline, unknown repo, rate limit...
                log.warning("cannot download %s (%s); trying the local Hub cache", source, type(error).__name__)
            try:
                return (Path(snapshot_download(source, allow_patterns=patterns, local_files_only=True)),
                        f"Hub repo {source} (from the local cache)")
            except Exception:
                log.warning("%s is not in the local Hub cache either; using the bundled weights", source)
    if not is_weights_dir(bundled):
        raise FileNotFoundError(f"no bundled weights in {bundled}")
    return bundled, f"bundled weights ({bundled})"


def load_models(source: str | None = None, bundled: Path = BUNDLED) -> Models:
    path, description = resolve_weights(source, bundled)
    vqvae = from_pretrained(VQVAE, path / "vqvae")
    prior = from_pretrained(GatedPixelCNN, path / "prior")
    if vqvae.num_codes != prior.num_codes:
        raise ValueError(f"{path}: the prior models {prior.num_codes} codes, the VQ-VAE has {vqvae.num_codes}")
    frequencies = None
    if (path / "prior" / FREQUENCIES).is_file():
        frequencies = np.asarray(json.loads((path / "prior" / FREQUENCIES).read_text()), dtype=np.float64)
    log.info("loaded models from %s", description)
    return Models(vqvae, prior, description, frequencies)
