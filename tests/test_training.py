import json

import pytest
import torch

from vqvae.training import CHECKPOINT, METRICS, RunConfig, TrainingRun, atomic_save


def make_run(out, resume=False, epochs=2.0):
    torch.manual_seed(0)  # the trainers seed before building the model
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    config = RunConfig(out=str(out), epochs=epochs, batch_size=4, lr=0.1, warmup_steps=2,
                       eval_minutes=1e9, resume=resume, progress=False)
    return TrainingRun(config, model, optimizer, dataset_size=20), model, optimizer


def train_steps(run, model, optimizer, data, stop_after=None):
    while not run.finished():
        index = run.next_batch()
        run.apply_learning_rate()
        # randomness inside the step (like the quantiser's restarts) must resume exactly too
        noise = 0.01 * torch.randn(len(index), 1)
        loss = (model(data[index]) - data[index].sum(1, keepdim=True) + noise).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.step_done({"loss": loss.item()})
        if stop_after is not None and run.step == stop_after:
            run.save_checkpoint()
            return False
    return True


def test_resume_gives_bit_identical_weights(tmp_path):
    data = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    run, model, opt = make_run(tmp_path / "whole")
    train_steps(run, model, opt, data)
    run.finish(lambda: {"score": 1.0})
    assert run.step == 10  # 20 items / batch 4 = 5 steps per epoch, 2 epochs

    run, model_b, opt = make_run(tmp_path / "interrupted")
    assert not train_steps(run, model_b, opt, data, stop_after=3)
    torch.manual_seed(123)  # a new process starts from other random state
    run, model_b, opt = make_run(tmp_path / "interrupted", resume=True)
    assert run.step == 3
    train_steps(run, model_b, opt, data)
    for a, b in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def test_metrics_log_and_checkpoint_written(tmp_path):
    data = torch.randn(20, 4)
    run, model, opt = make_run(tmp_path, epochs=1)
    train_steps(run, model, opt, data)
    final = run.finish(lambda: {"score": 0.5})
    assert final["score"] == 0.5
    records = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert records[0]["kind"] == "train" and records[-1]["kind"] == "eval"
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 5 and "torch_rng" in state


def test_schedule_warms_up_then_decays(tmp_path):
    run, _, _ = make_run(tmp_path, epochs=2)
    lrs = []
    while not run.finished():
        lrs.append(run.learning_rate())
        run.step += 1
    assert lrs[0] < lrs[1] == pytest.approx(0.1)
    assert lrs[-1] < lrs[2] and min(lrs[2:]) >= 0.1 * run.config.final_lr_fraction


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    atomic_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        atomic_save({"a": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"a": 1}


def test_config_needs_a_budget(tmp_path):
    with pytest.raises(ValueError, match="--minutes and/or --epochs"):
        RunConfig(out=str(tmp_path))


def test_training_device_choice(monkeypatch):
    from vqvae.training import training_device
    assert training_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device("auto") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert training_device("cuda") == torch.device("cuda", 3)  # torchrun: one GPU per process
    assert training_device("cuda:1") == torch.device("cuda", 1)
