"""End-to-end latency of the running app, driven through gradio_client, and a concurrency check.

    python -m benchmarks.app_latency [--model DIR_OR_REPO] [--repeats 10] [--clients 8]

Starts `python app.py` itself (bundled weights unless --model), times start-up to serving, then
prints p50/p95 for: reconstruction of an uploaded 256x256 slice (codes searched, and nearest), 4 samples at any position, 4 and
16 at slice position 16 with the app's guidance (which doubles the sampler's batch); then runs --clients
concurrent sampling clients and reports errors and the server's peak RSS. Loopback only; bounded.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vqvae.testing import synthetic_slice

ROOT = Path(__file__).resolve().parents[1]  # the repository root, where app.py lives


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def start_app(model: str | None = None):
    """Run `python app.py` on a free loopback port; yields (url, pid, seconds until serving)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "app.py", "--port", str(port)] + (["--model", model] if model else [])
    start = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - start > 120:
                    sys.exit("the app did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/", server.pid, time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)


def percentiles(times):
    return np.percentile(times, 50), np.percentile(times, 95)


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    with start_app(args.model) as (url, pid, startup):
        client = Client(url, verbose=False)
        upload = Path(tempfile.mkdtemp()) / "slice.png"
        Image.fromarray(synthetic_slice(np.random.default_rng(0), 256)).save(upload)

        rows = [("start-up to serving", [startup])]
        client.predict(handle_file(str(upload)), api_name="/reconstruct")  # warm-up
        for search, name in ((True, "reconstruct 256x256 upload (codes searched: the default)"),
                             (False, "reconstruct 256x256 upload (nearest codes)")):
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                client.predict(handle_file(str(upload)), search, api_name="/reconstruct")
                times.append(time.perf_counter() - t)
            rows.append((name, times))
        times = []
        for seed in range(args.repeats):
            t = time.perf_counter()
            client.predict(4, 1.0, 0, seed, "any", api_name="/sample")
            times.append(time.perf_counter() - t)
        rows.append(("sample 4 slices", times))
        from app import SAMPLE_GUIDANCE
        for n in (4, 16):
            times = []
            for seed in range(args.repeats):
                t = time.perf_counter()
                client.predict(n, 1.0, 0, seed, "16", "realistic", SAMPLE_GUIDANCE, api_name="/sample")
                times.append(time.perf_counter() - t)
            rows.append((f"sample {n}, k=16, guidance {SAMPLE_GUIDANCE:g}", times))

        errors, done = [], []

        def one_client(seed):
            try:
                Client(url, verbose=False).predict(4, 1.0, 0, seed, "any", api_name="/sample")
                done.append(seed)
            except Exception as error:  # counted and reported
                errors.append(repr(error))
        t = time.perf_counter()
        threads = [threading.Thread(target=one_client, args=(s,)) for s in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        burst = time.perf_counter() - t

        width = max(len(name) for name, _ in rows) + 2  # the labels' column fits the longest
        print(f"{'measure':<{width}}{'p50 s':>8}{'p95 s':>8}{'n':>4}")
        for name, values in rows:
            p50, p95 = percentiles(values)
            print(f"{name:<{width}}{p50:>8.2f}{p95:>8.2f}{len(values):>4}")
        print(f"{args.clients} concurrent clients sampling 4 each: {len(done)} ok, {len(errors)} errors, "
              f"{burst:.1f} s for all; server peak RSS {peak_rss_mb(pid):.0f} MB")
        for error in errors[:3]:
            print("  error:", error)


if __name__ == "__main__":
    main()
