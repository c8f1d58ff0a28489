"""How coherent sampled volumes are, against real validate volumes and against the cheapest
baseline (each slice sampled independently at its position k).

    python -m train.evaluate_volume --vqvae assets/models/vqvae --prior assets/models/prior \\
        --volume-prior assets/models/prior-volume --data ../shared/oasis -n 8 [--json]

For each kind of volume: mean SSIM between consecutive slices, between the first and the last
slice, how often the position network reads slice k back within one of k, and seconds per
volume (whole process: sampling and decoding). Decoded by the faithful VQ-VAE.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqvae.codes import decode_codes, encode_images
from vqvae.data import load_split
from vqvae.generation import SliceCNN, position_accuracy
from vqvae.hub import load_model, load_prior
from vqvae.model import VQVAE
from vqvae.prior import GatedPixelCNN
from vqvae.sampling import sample_codes, sample_volume
from vqvae.volume import real_volumes, volume_similarity
from train.cli import run_or_fail

DEFAULT_FEATURES = Path(__file__).resolve().parents[1] / "assets" / "models" / "position_net"


def measure(kind: str, volumes: torch.Tensor, seconds: float | None, feature_net) -> dict:
    """volumes: uint8 (V, S, H, W)."""
    v, s = volumes.shape[:2]
    read = position_accuracy(feature_net, volumes.reshape(v * s, 1, *volumes.shape[2:]),
                             torch.arange(s).repeat(v))
    return {"kind": kind, **volume_similarity(volumes.numpy()), "position_within_one": read["within_one"],
            "seconds_per_volume": seconds}


def evaluate(args) -> list[dict]:
    vqvae = load_model(VQVAE, args.vqvae)
    prior, volume_prior = load_prior(args.prior), load_model(GatedPixelCNN, args.volume_prior)
    feature_net = load_model(SliceCNN, args.features)
    validate = load_split(args.data, "validate", progress=not args.json)
    rows = [measure("real validate volumes", torch.from_numpy(real_volumes(validate.images, validate.subjects,
                                                                          validate.positions)), None, feature_net)]
    # each real slice encoded and decoded on its own: what volumes drawn slice by slice through
    # these codes can reach at best (a code flips between neighbours where the slice is in between)
    decoded = decode_codes(vqvae, encode_images(vqvae, validate.images))
    rows.append(measure("faithful reconstructions of the real volumes", torch.from_numpy(
        real_volumes(decoded, validate.subjects, validate.positions)), None, feature_net))
    slices = volume_prior.num_positions
    sampled, independent, times = [], [], []
    for v in range(args.n):
        start = time.perf_counter()
        codes = sample_volume(prior, volume_prior, 1, temperature=args.temperature, top_k=args.top_k,
                              seed=args.seed + v)[0]
        sampled.append(decode_codes(vqvae, codes)[:, 0])
        times.append(time.perf_counter() - start)
        alone = sample_codes(prior, slices, torch.arange(slices), args.temperature, args.top_k, seed=args.seed + v)
        independent.append(decode_codes(vqvae, alone)[:, 0])
    rows.append(measure("sampled volumes (volume prior)", torch.stack(sampled), sum(times) / len(times), feature_net))
    rows.append(measure("independent slices at each k (baseline)", torch.stack(independent), None, feature_net))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| volumes | n | consecutive-slice SSIM | first-vs-last SSIM | position read back within 1 | s per volume |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seconds = "" if r["seconds_per_volume"] is None else f"{r['seconds_per_volume']:.1f}"
        lines.append(f"| {r['kind']} | {r['volumes']} | {r['consecutive_ssim']:.3f} | {r['first_last_ssim']:.3f} | "
                     f"{r['position_within_one']:.3f} | {seconds} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--prior", required=True)
    parser.add_argument("--volume-prior", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--features", default=str(DEFAULT_FEATURES))
    parser.add_argument("-n", type=int, default=8, help="sampled volumes (and as many baseline ones)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, help="sample only from the k likeliest codes at each position")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = run_or_fail(evaluate, args)
    print(json.dumps(rows) if args.json else table(rows))


if __name__ == "__main__":
    main()
