"""Crash safety and safe loading of the trainers (SIGKILL at random moments, hostile
checkpoints, non-finite losses)."""
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.loop import CHECKPOINT, NonFiniteLoss, RunConfig, TrainingRun

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--codes", "16", "--code-dim", "8", "--base-channels", "4", "--hidden-channels", "8",
        "--batch-size", "4", "--no-progress", "--threads", "1", "--epochs", "6",
        "--eval-minutes", "1000", "--seed", "3"]


def train_command(data, out, *extra):
    return [sys.executable, "-m", "train.vqvae", "--data", str(data), "--out", str(out), *TINY, *extra]


def kill_and_resume(data, out: Path, kills: int, seed: int = 0, extra=()) -> int:
    """Train into ``out``, SIGKILL the trainer ``kills`` times at random moments once training is
    under way, resuming each time, then let it finish. Returns how many kills landed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(seed)
    landed = 0
    for _ in range(kills + 10):
        process = subprocess.Popen(train_command(data, out, "--resume", "--checkpoint-steps", "1", *extra),
                                   cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if landed < kills:
            deadline = time.time() + 120
            while not (out / CHECKPOINT).exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                landed += 1
        _, stderr = process.communicate(timeout=600)
        if process.returncode == 0:
            return landed
        assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    raise AssertionError("training never finished")


def same_weights(a_dir: Path, b_dir: Path) -> bool:
    a = load_file(a_dir / "model" / "model.safetensors")
    b = load_file(b_dir / "model" / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(oasis_like, tmp_path):
    subprocess.run(train_command(oasis_like, tmp_path / "whole"), check=True, cwd=ROOT, capture_output=True)
    assert kill_and_resume(oasis_like, tmp_path / "killed", kills=3) >= 1
    assert same_weights(tmp_path / "whole", tmp_path / "killed")


def test_resume_refuses_a_pickle_that_would_run_code(oasis_like, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    out = tmp_path / "run"
    out.mkdir()
    with open(out / CHECKPOINT, "wb") as handle:
        pickle.dump({"model": Exploit()}, handle)
    result = subprocess.run(train_command(oasis_like, out, "--resume"), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "refusing to resume" in result.stderr
    assert "Traceback" not in result.stderr and not marker.exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = TrainingRun(RunConfig(out=str(tmp_path), epochs=1, progress=False), model, optimizer, 64)
    run.step_done({"loss": 1.0})
    run.save_checkpoint()
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 2"):
        run.step_done({"loss": float("nan")})
    assert (tmp_path / CHECKPOINT).read_bytes() == before


def test_skip_bad_reports_and_continues(oasis_like, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(oasis_like, data)
    (data / "keras_png_slices_train" / "case_009_slice_0.nii.png").write_text("not an image")
    strict = subprocess.run(train_command(data, tmp_path / "a"), cwd=ROOT, capture_output=True, text=True)
    assert strict.returncode != 0 and "case_009_slice_0.nii.png" in strict.stderr
    assert "Traceback" not in strict.stderr
    lenient = subprocess.run(train_command(data, tmp_path / "b", "--skip-bad", "--epochs", "1"),
                             cwd=ROOT, capture_output=True, text=True)
    assert lenient.returncode == 0, lenient.stderr[-2000:]
    assert "skipped 1 bad files" in lenient.stdout
