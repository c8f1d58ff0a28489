"""Two CPU processes with gloo: the codebooks stay identical and training progresses."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel

    from vqvae.model import VQVAE
    torch.manual_seed(0)
    model = VQVAE(num_codes=32, code_dim=8, base_channels=4, hidden_channels=8, res_hidden=4)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(100 + rank)  # each rank sees different data and draws different randomness
    data = torch.rand(4, 1, 32, 32) * torch.linspace(0, 1, 32).view(1, 1, 1, 32)
    losses = []
    for _ in range(25):
        reconstruction, commit, _ = ddp(data)
        loss = torch.nn.functional.mse_loss(reconstruction, data) + commit
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    codebooks = [torch.empty_like(model.quantizer.codebook) for _ in range(world)]
    dist.all_gather(codebooks, model.quantizer.codebook.contiguous())
    weights = [torch.empty_like(model.decoder.net[0].weight) for _ in range(world)]
    dist.all_gather(weights, model.decoder.net[0].weight.detach().contiguous())
    if rank == 0:
        results.put({"codebooks_equal": all(torch.equal(codebooks[0], c) for c in codebooks),
                     "weights_equal": all(torch.equal(weights[0], w) for w in weights),
                     "first": sum(losses[:3]) / 3, "last": sum(losses[-3:]) / 3})
    dist.destroy_process_group()


def test_two_gloo_processes_share_one_codebook_and_learn():
    context = mp.get_context("spawn")
    results = context.Queue()
    mp.start_processes(_worker, args=(2, free_port(), results), nprocs=2, join=True, start_method="spawn")
    outcome = results.get(timeout=10)
    assert outcome["codebooks_equal"] and outcome["weights_equal"]
    assert outcome["last"] < 0.7 * outcome["first"]


def test_trainer_runs_under_torchrun(oasis_like, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "train.vqvae", "--data", str(oasis_like), "--out", str(out), "--epochs", "2",
               "--codes", "16", "--code-dim", "8", "--base-channels", "4", "--hidden-channels", "8",
               "--batch-size", "2", "--no-progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 12 images, 2 per rank and 2 ranks: 3 steps an epoch, logged once (rank 0 only)
    assert records[-1]["step"] == 6 and len([r for r in records if r["kind"] == "eval"]) == 1
    assert (out / "model" / "model.safetensors").is_file()
    # resume on one process continues from the 2-rank checkpoint: 6 steps of 4 images = 12 of 2
    single = [sys.executable, "-m", "train.vqvae", *command[command.index("--data"):]]
    single[single.index("--epochs") + 1] = "4"
    result = subprocess.run(single + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "at step 12" in result.stdout
