"""Training machinery shared by every trainer: the run configuration, time/epoch budget,
learning-rate schedule, deterministic resumable batches, JSON-lines metrics, atomic checkpoints,
progress bar. The trainers themselves are in ``vqvae/trainers.py``.

A trainer builds its model and optimiser, then:

    run = TrainingRun(config, model, optimizer, dataset_size)
    while not run.finished():
        index = run.next_batch()
        ... forward, backward, optimizer.step() at lr run.apply_learning_rate() ...
        run.step_done({"loss": ...}, evaluate)
    run.finish(evaluate, save_dir=run.out / MODEL)

``evaluate()`` returns a dict of validation metrics; it runs every ``eval_minutes`` of training
time and at the end, each time followed by a checkpoint. The wall-clock budget counts training
time only, so the time-to-quality curve is not distorted by evaluation.

Resuming: the checkpoint holds the model, the optimiser, the step, the training time and the RNG
state. With an ``epochs`` budget the schedule follows the step count, so ``--resume`` continues
bit for bit. With a ``minutes`` budget the schedule follows training time, which is never the
same twice: a resumed run continues correctly but not bit for bit.

Under ``torchrun`` (WORLD_SIZE > 1) every rank takes its own slice of each global batch
(``batch_size`` per rank), rank 0 alone evaluates, logs and writes checkpoints, and rank 0's
decision to stop is broadcast so all ranks run the same number of steps. Checkpoints count
images seen, so a run can resume on a different number of ranks.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .hub import lineage, save_model
from .precision import autocast, time_precisions

# What a run directory holds, named once.
CHECKPOINT, METRICS, RUN_CONFIG, MODEL = "checkpoint.pt", "metrics.jsonl", "run_config.json", "model"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf."""


def option(default=MISSING, help: str = "", **argparse):
    """A configuration field with its command-line help (and any other argparse keywords):
    ``train/cli.py`` builds each trainer's arguments from these."""
    return field(default=default, metadata={"help": help, **argparse})


@dataclass(kw_only=True)
class RunConfig:
    """Settings every trainer shares; each trainer's configuration adds its own."""
    out: str = option(help="run directory (metrics, checkpoint, final model)")
    minutes: float | None = option(None, "training-time budget")
    epochs: float | None = option(None, "epoch budget")
    batch_size: int = option(16, "images per step (per process under torchrun)")
    lr: float = option(2e-3, "peak learning rate")
    warmup_steps: int = option(20, "linear warm-up steps")
    final_lr_fraction: float = option(0.05, "cosine decay ends at lr * this")
    eval_minutes: float = option(2.0, "evaluate and checkpoint every this much training time")
    checkpoint_steps: int = option(0, "also checkpoint (without evaluating) every N steps; 0 = off")
    device: str = option("auto", "auto (the GPU where there is one), cpu, cuda, cuda:N")
    seed: int = option(0, "seed of the model's start and of the batch order")
    resume: bool = option(False, "continue from RUN_DIR/checkpoint.pt")
    threads: int | None = option(None, "torch threads (default: all cores)")
    compile: bool = option(False, "torch.compile the model's forward pass")
    precision: str = option("auto", "fp32, bf16 (autocast), or auto: time a few steps of each at start-up and keep "
                                    "the faster (kept in the checkpoint, so --resume keeps it)",
                            choices=("auto", "fp32", "bf16"))
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self):
        if self.minutes is None and self.epochs is None:
            raise ValueError("give --minutes and/or --epochs")
        if (self.minutes is not None and self.minutes <= 0) or (self.epochs is not None and self.epochs <= 0):
            raise ValueError("--minutes and --epochs must be positive")

    def start(self):
        """Apply the process-wide settings; call before building the model (it seeds torch)."""
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)


def atomic_save(obj, path: Path):
    """torch.save to a temporary file, fsync, then rename: a kill at any moment leaves either
    the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def training_device(requested: str = "auto") -> torch.device:
    """"auto": this process's GPU (cuda:LOCAL_RANK under torchrun) where CUDA is available,
    else the CPU; or exactly what was asked ("cpu", "cuda", "cuda:1")."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def distributed_setup() -> tuple[int, int]:
    """Join the process group when launched by torchrun; -> (rank, world size).
    Backend: nccl where CUDA is available (each process on GPU LOCAL_RANK), else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def parallel(model: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
    """The model to run forward/backward through: DistributedDataParallel under torchrun (it
    averages gradients across ranks), the model itself otherwise; ``compile`` wraps that in
    ``torch.compile`` (off by default: see benchmarks/train_vqvae.py --compile)."""
    _, world = distributed_setup()
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        device = next(model.parameters()).device
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model


class TrainingRun:
    def __init__(self, config: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 dataset_size: int, companions: dict | None = None):
        """``companions``: other things with a state that a resumed run needs (a discriminator
        and its optimiser), saved in the checkpoint by name; the final model is ``model`` alone."""
        self.config, self.model, self.optimizer = config, model, optimizer
        self.companions = companions or {}
        self.rank, self.world = distributed_setup()
        self.device = training_device(config.device)
        model.to(self.device)  # parameters move in place, so the optimiser's references stay valid
        for companion in self.companions.values():
            if isinstance(companion, torch.nn.Module):
                companion.to(self.device)
        self.is_main = self.rank == 0
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dataset_size = dataset_size
        self.global_batch = config.batch_size * self.world
        self.steps_per_epoch = max(1, dataset_size // self.global_batch)
        self.total_steps = (math.ceil(config.epochs * self.steps_per_epoch)
                            if config.epochs is not None else None)
        self.step, self.train_seconds, self.last_eval_seconds = 0, 0.0, 0.0
        self.history: list[dict] = []
        self.precision = None if config.precision == "auto" else config.precision
        if config.resume and (self.out / CHECKPOINT).exists():
            self._load_checkpoint()
        elif config.resume:
            print(f"no checkpoint in {self.out}; starting fresh")
        if self.is_main:
            saved = asdict(config)
            if saved.get("init"):  # the lineage of --init as it is now (that folder may be replaced later)
                before = self.out / RUN_CONFIG
                kept = json.loads(before.read_text()).get("init_stages") if config.resume and before.is_file() else None
                saved["init_stages"] = kept or lineage(saved["init"])
            (self.out / RUN_CONFIG).write_text(json.dumps(saved, indent=2))
        self._tick = time.perf_counter()
        self.bar = tqdm(total=self.total_steps, initial=self.step, disable=not (config.progress and self.is_main),
                        unit="step", dynamic_ncols=True)
        self._images_since, self._time_since = 0, 0.0

    # -- precision ------------------------------------------------------------------------
    def choose_precision(self, loss_of, batch) -> None:
        """Settle the run's precision: as configured, as the checkpoint had it, or (auto) the
        faster of fp32 and bf16 for ``loss_of(model, batch, context)`` (the trainer's loss with its
        forward pass inside ``context``) timed on a copy of the model, so the run's weights,
        statistics and random stream are untouched. Logged."""
        if self.precision is not None:
            return
        probe = copy.deepcopy(self.model)

        def step(context):
            loss_of(probe, batch, context).backward()
            probe.zero_grad(set_to_none=True)

        # the probe draws random numbers (codebook restarts, texture noise): none of the run's
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            seconds = time_precisions(step, self.device)
        self.precision = min(seconds, key=seconds.get)
        if self.world > 1:  # every rank trains as rank 0 measured
            flag = torch.tensor([int(self.precision == "bf16")], device=self.device)
            dist.broadcast(flag, src=0)
            self.precision = "bf16" if flag.item() else "fp32"
        if self.is_main:
            message = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in seconds.items())
            print(f"precision auto: one step takes {message}; training in {self.precision}")
            self.log({"kind": "precision", "chosen": self.precision,
                      **{f"{k}_seconds": v for k, v in seconds.items()}})  # as compared: rounded, they could tie or flip

    def autocast(self):
        """The context each training step runs in (call ``choose_precision`` first)."""
        return autocast(self.precision or "fp32", self.device)

    # -- budget and schedule ------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the budget spent: the larger of steps and training time."""
        parts = []
        if self.total_steps is not None:
            parts.append(self.step / self.total_steps)
        if self.config.minutes is not None:
            parts.append(self.train_seconds / (60.0 * self.config.minutes))
        return min(1.0, max(parts))

    def finished(self) -> bool:
        done = self.progress() >= 1.0
        if self.world > 1:  # time budgets differ slightly per rank: rank 0 decides for all
            flag = torch.tensor([int(done)], device=self.device)  # nccl only moves GPU tensors
            dist.broadcast(flag, src=0)
            done = bool(flag.item())
        self._tick = time.perf_counter()
        return done

    def learning_rate(self) -> float:
        """Linear warm-up, then cosine decay to ``final_lr_fraction`` over the budget."""
        c = self.config
        if self.step < c.warmup_steps:
            return c.lr * (self.step + 1) / c.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress()))
        return c.lr * (c.final_lr_fraction + (1 - c.final_lr_fraction) * cosine)

    def apply_learning_rate(self) -> float:
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def next_batch(self) -> torch.Tensor:
        """Indices of the next batch: a fresh permutation per epoch, seeded by (seed, epoch), so
        a resumed run sees exactly the batches an uninterrupted one would."""
        epoch, position = divmod(self.step, self.steps_per_epoch)
        if getattr(self, "_perm_epoch", None) != epoch:
            generator = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
            self._perm = torch.randperm(self.dataset_size, generator=generator)
            self._perm_epoch = epoch
        start = position * self.global_batch + self.rank * self.config.batch_size
        return self._perm[start:start + self.config.batch_size]

    # -- bookkeeping --------------------------------------------------------------------
    def step_done(self, metrics: dict[str, float], evaluate=None):
        """Account for one optimiser step. A non-finite loss stops the run before anything is
        saved, so the last good checkpoint stays as it was."""
        bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
        if bad:
            self.bar.close()
            raise NonFiniteLoss(f"non-finite {', '.join(bad)} at step {self.step + 1}; stopped, the last "
                                f"good checkpoint ({self.out / CHECKPOINT}) is untouched. Try a lower --lr.")
        now = time.perf_counter()
        elapsed = now - self._tick
        self.train_seconds += elapsed
        self.step += 1
        self._images_since += self.global_batch
        self._time_since += elapsed
        if self.step % 10 == 0 or self.step == 1:
            metrics = {k: round(float(v), 5) for k, v in metrics.items()}
            metrics["img/s"] = round(self._images_since / max(self._time_since, 1e-9), 1)
            self.bar.set_postfix(metrics, refresh=False)
            self.log({"kind": "train", **metrics})
            self._images_since, self._time_since = 0, 0.0
        self.bar.update(1)
        if evaluate is not None and self.train_seconds - self.last_eval_seconds >= 60 * self.config.eval_minutes:
            self.evaluate_and_checkpoint(evaluate)
        elif self.config.checkpoint_steps and self.step % self.config.checkpoint_steps == 0:
            self.save_checkpoint()

    def log(self, record: dict):
        if not self.is_main:
            return
        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                  "train_minutes": round(self.train_seconds / 60, 3), **record}
        with open(self.out / METRICS, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def evaluate_and_checkpoint(self, evaluate):
        self.last_eval_seconds = self.train_seconds
        if evaluate is not None and self.is_main:
            was_training = self.model.training
            result = evaluate()
            self.model.train(was_training)
            self.history.append({"step": self.step, "train_minutes": self.train_seconds / 60, **result})
            self.log({"kind": "eval", **result})
            self.bar.write(f"step {self.step} ({self.train_seconds / 60:.1f} min): "
                           + ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
        self.save_checkpoint()

    def save_checkpoint(self):
        if not self.is_main:
            return
        atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "step": self.step, "images_seen": self.step * self.global_batch,
                     "train_seconds": self.train_seconds,
                     "last_eval_seconds": self.last_eval_seconds, "history": self.history,
                     "torch_rng": torch.get_rng_state(), "precision": self.precision,
                     "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                     "companions": {name: c.state_dict() for name, c in self.companions.items()}},
                    self.out / CHECKPOINT)

    def _load_checkpoint(self):
        path = self.out / CHECKPOINT
        try:
            # weights_only: tensors and plain containers only; a pickle that would run code is refused
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"refusing to resume from {path}: not a plain checkpoint "
                             f"({type(error).__name__}); move it away to start fresh") from None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, companion in self.companions.items():
            if name not in state.get("companions", {}):
                raise ValueError(f"{path} has no {name}: it was written by a run with other settings")
            companion.load_state_dict(state["companions"][name])
        # steps are counted in global batches: convert when the number of ranks changed
        self.step = state.get("images_seen", state["step"] * self.global_batch) // self.global_batch
        self.train_seconds = state["train_seconds"]
        self.last_eval_seconds, self.history = state["last_eval_seconds"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        # a run keeps the precision it started with (checkpoints from before the choice were fp32)
        self.precision = state.get("precision") or "fp32"
        if self.is_main:
            print(f"resumed from {self.out / CHECKPOINT} at step {self.step} "
                  f"({self.train_seconds / 60:.1f} training minutes)")

    def finish(self, evaluate=None, save_dir: str | Path | None = None) -> dict:
        """Final evaluation and checkpoint; save the model in the Hub layout to ``save_dir``."""
        self.bar.close()
        if self.history and self.history[-1]["step"] == self.step:
            self.save_checkpoint()  # the last evaluation was at this very step
        else:
            self.evaluate_and_checkpoint(evaluate)
        if save_dir is not None and self.is_main:
            save_model(self.model, save_dir)
            print(f"saved model to {save_dir}")
        if self.world > 1 and dist.is_initialized():
            # every rank waits for rank 0's evaluation and save, then all leave the group together:
            # a rank that exits while its peers still talk makes gloo abort the process (SIGABRT)
            dist.barrier()
            dist.destroy_process_group()
        return self.history[-1] if self.history else {}


def load_into(model: torch.nn.Module, trained: torch.nn.Module, new: tuple[str, ...] = ()):
    """``--init``: copy a trained model's weights into ``model``. Only tensors whose names
    contain one of ``new`` (parts the trained model did not have; they keep their own start)
    may be missing from it; any other difference raises ValueError naming the tensors."""
    mine, theirs = model.state_dict(), trained.state_dict()
    differ = [k for k in theirs if k not in mine or mine[k].shape != theirs[k].shape]
    differ += [k for k in mine if k not in theirs and not any(part in k for part in new)]
    if differ:
        raise ValueError(f"the --init model's architecture differs from this one: {', '.join(sorted(differ)[:3])}"
                         + (f" and {len(differ) - 3} more" if len(differ) > 3 else ""))
    model.load_state_dict(theirs, strict=False)
