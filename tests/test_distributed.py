"""Two CPU processes with gloo: the EMA statistics are those of the combined batch, the codebooks
stay identical, and training progresses."""
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TIMEOUT = timedelta(seconds=90)  # a collective that never completes fails well inside pytest's 300 s

# The EMA comparison: a batch of encoder outputs split between the ranks must update the codebook
# exactly as one process updates it on the whole batch. Initialisation and restarts draw random
# rows (rank 0's, broadcast), so both are fixed here: the codebook starts from the same values in
# every process and dead_threshold=0 turns restarts off, leaving only the summed statistics.
CODES, DIM, STEPS, BATCH = 8, 4, 3, 4


def _quantiser():
    from vqvae.quantizer import VectorQuantizer
    quantiser = VectorQuantizer(num_codes=CODES, code_dim=DIM, decay=0.8, data_init=False, dead_threshold=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        quantiser.codebook.copy_(torch.randn(CODES, DIM, generator=generator))
        quantiser.ema_sum.copy_(quantiser.codebook)
        quantiser.ema_count.fill_(1.0)
        quantiser.initialised.fill_(True)
    return quantiser.train()


def _batches():
    """STEPS batches of BATCH encoder outputs (B, D, H, W), the same in every process."""
    return torch.randn(STEPS, BATCH, DIM, 4, 4, generator=torch.Generator().manual_seed(2))


def _ema_state(quantiser, batches):
    for batch in batches:
        quantiser(batch)
    return {name: getattr(quantiser, name).tolist() for name in ("codebook", "ema_count", "ema_sum")}


def _ema_worker(rank, world, port, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    share = BATCH // world
    results.put((rank, _ema_state(_quantiser(), _batches()[:, rank * share:(rank + 1) * share])))
    _leave(results)


def _leave(results):
    """Both ranks leave together (gloo aborts a process whose peer hung up mid-teardown), then
    exit at once. A normal interpreter exit runs C++ static destructors, and a gloo thread still
    joinable there ends the process with std::terminate (SIGABRT, "terminate called without an
    active exception": seen once in CI after both ranks had finished). Everything this test
    checks is in the queue by then, so the queue is flushed and the process skips that teardown."""
    dist.barrier()
    dist.destroy_process_group()
    results.close()
    results.join_thread()  # the feeder thread has written every result into the pipe
    os._exit(0)


def _two_ranks(worker):
    """Run ``worker(rank, 2, port, results)`` in two spawned processes; -> the results queue."""
    results = mp.get_context("spawn").Queue()
    mp.start_processes(worker, args=(2, free_port(), results), nprocs=2, join=True, start_method="spawn")
    return results


def test_two_ranks_update_the_codebook_as_one_process_on_the_combined_batch():
    results = _two_ranks(_ema_worker)
    ranks = dict(results.get(timeout=30) for _ in range(2))
    combined = _ema_state(_quantiser(), _batches())  # one process (no process group), whole batches
    first_half = _ema_state(_quantiser(), _batches()[:, :BATCH // 2])  # what a broadcast would give
    for name, expected in combined.items():
        expected = torch.tensor(expected)
        # the halves alone give other statistics, so the comparison below can tell sum from copy
        assert not torch.allclose(torch.tensor(first_half[name]), expected, rtol=1e-3, atol=1e-3), name
        for rank, state in ranks.items():
            assert torch.allclose(torch.tensor(state[name]), expected, rtol=1e-5, atol=1e-5), (name, rank)


def _worker(rank, world, port, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
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
    del ddp, optimizer, model  # the process group's last users go before it does
    _leave(results)


def test_two_gloo_processes_share_one_codebook_and_learn():
    outcome = _two_ranks(_worker).get(timeout=30)
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
