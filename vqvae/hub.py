"""Loading trained models: one model directory, or the app's set of weights from a local
directory, a Hugging Face Hub repo, or the copy bundled with the app.

A model directory is the Hub layout ``config.json`` (the constructor's keyword arguments) +
``model.safetensors``. Loading is strict: a missing, extra or wrongly shaped tensor is an error
naming it (huggingface_hub's own loader skips missing tensors silently, leaving them random).

A weights set holds ``vqvae/`` (the faithful VQ-VAE) and ``prior/``, and may hold
``vqvae-realistic/``: the same encoder and codebook with a decoder trained adversarially to draw
realistic texture (so both decode the same codes, and the prior serves both). ``prior/`` may also
hold ``code_frequencies.json``, the training frequency of each code, for the app's histogram. Resolution order: a local
directory; the Hub (through huggingface_hub's cache); the Hub cache alone when the network is
unreachable; finally the bundled copy, whose place the caller gives (the app's own folder:
an installed package does not know where its app lives). The caller is told which was used.
"""
from __future__ import annotations

import inspect
import json
import re
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .generation import SliceCNN
from .model import VQVAE
from .precision import choose_detail_precision
from .prior import GatedPixelCNN
from .surprise import SURPRISE_REFERENCE
from .transformer import CodeTransformer

CONFIG, WEIGHTS, FREQUENCIES = "config.json", "model.safetensors", "code_frequencies.json"
PARTS = ("vqvae", "prior")   # required
REALISTIC = "vqvae-realistic"  # optional: a decoder trained adversarially on the same codes
VOLUME_PRIOR = "prior-volume"  # optional: the prior conditioned on the slice below, for volumes
POSITION_NET = "position_net"  # optional: reads a slice's position k (the surprise map's condition)
log = logging.getLogger("brainvq")


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded as the asked-for class; the message says why."""


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def load_model(cls, path: str | Path) -> torch.nn.Module:
    """A model of class ``cls`` from a local model directory, in eval mode; strict. ``cls`` may
    also be a function that picks the class from the parsed config.json (``load_prior``)."""
    folder = Path(path)
    if not is_model_dir(folder):
        raise ModelLoadError(f"{folder} is not a model directory (needs {CONFIG} and {WEIGHTS})")
    wanted = cls.__name__ if isinstance(cls, type) else "model"
    try:
        config = json.loads((folder / CONFIG).read_text())
        if not isinstance(cls, type):
            cls = cls(config)
        model = cls(**config)
    except ModelLoadError:
        raise
    except (ValueError, TypeError) as error:
        raise ModelLoadError(f"{folder / CONFIG} does not describe a {wanted}: {error}") from None
    try:
        state = load_file(folder / WEIGHTS)
    except Exception as error:  # truncated or not a safetensors file
        raise ModelLoadError(f"cannot read {folder / WEIGHTS} ({type(error).__name__}: {error})") from None
    expected = model.state_dict()
    problems = []
    if missing := expected.keys() - state.keys():
        problems.append(f"missing tensors {_names(missing)}")
    if extra := state.keys() - expected.keys():
        problems.append(f"unexpected tensors {_names(extra)}")
    if shaped := [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]:
        problems.append(f"wrongly shaped tensors {_names(shaped)}")
    if problems:
        raise ModelLoadError(f"{folder / WEIGHTS} does not match its {CONFIG} ({cls.__name__}): "
                             + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model.eval()


PRIOR_CLASSES = (GatedPixelCNN, CodeTransformer)


def prior_class(config: dict):
    """The prior class a config.json describes: the one whose constructor takes all its keys
    (the PixelCNN has a ``kernel``, the transformer ``heads``)."""
    for cls in PRIOR_CLASSES:
        if set(config) <= set(inspect.signature(cls.__init__).parameters):
            return cls
    raise ModelLoadError(f"the config's keys ({', '.join(sorted(config))}) describe none of the prior classes "
                         f"({', '.join(c.__name__ for c in PRIOR_CLASSES)})")


def load_prior(path: str | Path) -> GatedPixelCNN | CodeTransformer:
    """A prior of whichever class its config.json describes (``load_model``'s checks apply)."""
    return load_model(prior_class, path)


def prior_description(prior) -> str:
    """What a prior is, in a few words (the page and the model card say it)."""
    if isinstance(prior, CodeTransformer):
        return "causal transformer"
    if len(getattr(prior, "attention", ())):
        return "gated PixelCNN with causal self-attention (PixelSNAIL-style)"
    return "gated PixelCNN"


def save_model(model, path: str | Path) -> Path:
    """``model.save_pretrained`` into a temporary sibling directory, then renamed into place: a
    model directory that exists is complete (a killed run never leaves half a model)."""
    path = Path(path)
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    if path.exists():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old)
    else:
        os.replace(staging, path)
    return path


@dataclass
class Models:
    """The app's models and where they came from."""
    vqvae: VQVAE
    prior: GatedPixelCNN | CodeTransformer
    source: str  # where the weights came from, for the log and the page (never a server path)
    code_frequencies: np.ndarray | None = None  # training frequency of each code
    realistic: VQVAE | None = None  # the adversarially trained decoder on the same codes, if shipped
    volume_prior: GatedPixelCNN | None = None  # the prior conditioned on the slice below, if shipped
    surprise_reference: dict | None = None  # validate's total surprise under the prior (mean, std, p99)
    position_net: torch.nn.Module | None = None  # SliceCNN reading slice position k, if shipped


def is_weights_dir(path: str | Path | None) -> bool:
    return path is not None and all(is_model_dir(Path(path) / name) for name in PARTS)


def resolve_weights(source: str | None, bundled: str | Path | None) -> tuple[Path, str]:
    """-> (directory holding vqvae/ and prior/, a short description of where it came from)."""
    if source:
        path = Path(source).expanduser()
        if path.is_dir():
            if is_weights_dir(path):
                return path, f"local directory {path.name}"
            log.warning("%s lacks vqvae/ and prior/ model directories; using the bundled weights", path)
        else:
            from huggingface_hub import snapshot_download
            patterns = [f"{name}/*" for name in (*PARTS, REALISTIC, VOLUME_PRIOR, POSITION_NET)] + ["*.md"]
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
    return Path(bundled), "bundled weights"


def load_models(source: str | None, bundled: str | Path | None = None) -> Models:
    """The app's models from ``source`` (a directory or a Hub repo id), else from ``bundled``."""
    path, description = resolve_weights(source, bundled)
    vqvae, prior = load_model(VQVAE, path / "vqvae"), load_prior(path / "prior")
    if vqvae.num_codes != prior.num_codes:
        raise ModelLoadError(f"{path}: the prior models {prior.num_codes} codes, the VQ-VAE has {vqvae.num_codes}")
    realistic = None
    if is_model_dir(path / REALISTIC):
        realistic = load_realistic(vqvae, path / REALISTIC)
    volume_prior = None
    if is_model_dir(path / VOLUME_PRIOR):
        volume_prior = load_model(GatedPixelCNN, path / VOLUME_PRIOR)
        if volume_prior.num_codes != vqvae.num_codes or not volume_prior.previous_slice:
            raise ModelLoadError(f"{path / VOLUME_PRIOR}: not a prior conditioned on the slice below, "
                                 f"over the VQ-VAE's {vqvae.num_codes} codes")
    frequencies = None
    if (path / "prior" / FREQUENCIES).is_file():
        frequencies = np.asarray(json.loads((path / "prior" / FREQUENCIES).read_text()), dtype=np.float64)
    reference = None
    if (path / "prior" / SURPRISE_REFERENCE).is_file():
        reference = json.loads((path / "prior" / SURPRISE_REFERENCE).read_text())
    position_net = None
    if is_model_dir(path / POSITION_NET):
        position_net = load_model(SliceCNN, path / POSITION_NET)
    log.info("loaded models from %s (%s)", description, path)
    return Models(vqvae, prior, description, frequencies, realistic, volume_prior, reference, position_net)


def load_realistic(faithful: VQVAE, path: str | Path) -> VQVAE:
    """A second decoder on ``faithful``'s codes (checked), its detail head set to draw in the
    faster precision on this machine (``precision.choose_detail_precision``), as the app draws it."""
    realistic = load_model(VQVAE, path)
    check_same_codes(faithful, realistic, path)
    seconds = choose_detail_precision(realistic)
    if seconds:
        log.info("realistic decoder's detail head draws in %s (one slice: %s)", realistic.decoder.detail.precision,
                 ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in seconds.items()))
    return realistic


def check_same_codes(faithful: VQVAE, other: VQVAE, where):
    """Two VQ-VAEs give identical codes when their encoders and codebooks are equal tensor for
    tensor; a prior trained on one then serves both."""
    mine, theirs = faithful.state_dict(), other.state_dict()
    coding = [k for k in mine if k.startswith(("encoder.", "quantizer."))]
    differ = [k for k in coding if k not in theirs or not torch.equal(mine[k], theirs[k])]
    if differ:
        raise ModelLoadError(f"{where}: its encoder or codebook differs from vqvae/'s ({_names(differ)}), "
                             "so its codes would not be the prior's")


# -- what a model went through (its training stages), for model cards and tables -------------

TRAINING = "training.json"  # in a packaged model directory: its stages and evaluations, for later cards


def run_summary(model_dir: Path) -> dict:
    """What a run recorded about itself: its settings, its last evaluation, a full evaluation.
    A packaged model (no run directory around it) carries the same in its training.json."""
    model_dir = Path(model_dir)
    run = model_dir.parent
    if not (run / "run_config.json").is_file() and (model_dir / TRAINING).is_file():
        return json.loads((model_dir / TRAINING).read_text())
    summary = {}
    if (run / "run_config.json").is_file():
        summary["config"] = json.loads((run / "run_config.json").read_text())
    if (run / "metrics.jsonl").is_file():
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                 if '"eval"' in line]
        if evals:
            summary["last_eval"] = evals[-1]
    if (run / "validate.json").is_file():
        summary["validate"] = json.loads((run / "validate.json").read_text())
    return summary


def training_stages(config: dict) -> list[str]:
    """One line per stage, oldest first, following --init back to the run it started from. A
    run records its --init's lineage when it starts (``init_stages``): the folder it started
    from may since have been replaced by another model (a new prior shipped in its place)."""
    budget = f"{config['minutes']} minutes" if config.get("minutes") else f"{config.get('epochs')} epochs"
    part = ""
    if config.get("decoder_only"):
        part = " of the decoder only"
    elif config.get("encoder_only"):
        part = " of the encoder only"
    elif "detail_channels" in config:  # train.realistic's runs
        branch = (f" + a half-resolution branch ({config['detail_mid_channels']} channels)"
                  if config.get("detail_mid_channels") else "")
        against = (", against a discriminator" if config.get("adversarial_weight", 1.0) else "") + (
            ", scored by the energy score" if config.get("energy_weight") else "")
        part = f" of a detail head ({config.get('detail_channels')} channels{branch}) on the frozen decoder{against}"
    stage = (f"{budget}{part}, batch {config.get('batch_size')}, lr {config.get('lr')}, seed {config.get('seed')}")
    started = config.get("init")
    if not started:
        return [stage]
    return (config.get("init_stages") or lineage(started)) + [stage]


def lineage(model_dir) -> list[str]:
    """The stages that made the model in ``model_dir`` as it is now, oldest first."""
    earlier = run_summary(Path(model_dir))
    if "stages" in earlier:  # a packaged model: its lineage travels with it
        return earlier["stages"]
    config = earlier.get("config")
    return training_stages(config) if config else [f"the weights of {model_dir}"]


def stages_of(summary: dict) -> list[str]:
    return summary["stages"] if "stages" in summary else training_stages(summary.get("config", {}))


def training_minutes(stages: list[str]) -> float | None:
    """Total minutes of a model's stages (None if any stage was budgeted in epochs)."""
    minutes = [re.match(r"([\d.]+) minutes", stage) for stage in stages]
    return None if not all(minutes) else sum(float(m.group(1)) for m in minutes)
