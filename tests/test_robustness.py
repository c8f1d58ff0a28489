"""Crash safety and safe loading of the trainers (SIGKILL at random moments, hostile
checkpoints, non-finite losses)."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqvae.testing import kill_and_resume, same_weights, train_command
from vqvae.training import CHECKPOINT, NonFiniteLoss, RunConfig, TrainingRun

ROOT = Path(__file__).resolve().parents[1]


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(oasis_like, tmp_path):
    subprocess.run(train_command(oasis_like, tmp_path / "whole"), check=True, cwd=ROOT, capture_output=True)
    assert kill_and_resume(oasis_like, tmp_path / "killed", kills=3, root=ROOT) >= 1
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
