"""Small helpers the command-line entry points share: loading models with a one-line error."""
from __future__ import annotations

import sys
from pathlib import Path

from vqvae.hub import from_pretrained


def fail(message: str):
    """Exit non-zero with a one-line reason (no stack trace)."""
    sys.exit(f"error: {message}")


def load_model(cls, path: str):
    """``cls.from_pretrained`` on a local model directory, with a one-line error on failure."""
    folder = Path(path)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        fail(f"{path} is not a model directory (needs config.json and model.safetensors)")
    try:
        return from_pretrained(cls, folder)
    except Exception as error:  # corrupt or mismatched weights
        fail(f"cannot load {cls.__name__} from {path}: {error}")
