"""Sample new brain volumes: 32 axial slices drawn bottom up, each conditioned on the one below.

    python -m train.sample_volume --vqvae DIR --prior DIR -n N --out DIR [--volume-prior DIR] \\
        [--seed S] [--temperature T] [--top-k K]

Slice 0 comes from --prior (the ordinary prior at position 0), slices 1..31 from the volume prior
(default: prior-volume beside --prior, then assets/models/prior-volume). Writes
volume_000.nii.gz ... (uint8, 256 x 256 x 32, axial slices on the last axis, k = 0..31; see
vqvae/volume.py for orientation and spacing) and volume_000.png, every 4th slice side by side.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image

from vqvae.codes import decode_codes
from vqvae.hub import is_model_dir, load_model, load_prior
from vqvae.model import VQVAE
from vqvae.prior import GatedPixelCNN
from vqvae.sampling import sample_volume
from vqvae.volume import strip, write_nifti
from train.cli import run_or_fail

BUNDLED_VOLUME_PRIOR = Path(__file__).resolve().parents[1] / "assets" / "models" / "prior-volume"


def volume_prior_dir(args) -> Path:
    candidates = [Path(args.volume_prior)] if args.volume_prior else [Path(args.prior).parent / "prior-volume",
                                                                      BUNDLED_VOLUME_PRIOR]
    for folder in candidates:
        if is_model_dir(folder):
            return folder
    raise FileNotFoundError(f"no volume prior in {' or '.join(map(str, candidates))} (train one with "
                            "python -m train.prior --previous-slice 32 --init PRIOR)")


def sample(args):
    vqvae, prior = load_model(VQVAE, args.vqvae), load_prior(args.prior)
    volume_prior = load_model(GatedPixelCNN, volume_prior_dir(args))
    if not vqvae.num_codes == prior.num_codes == volume_prior.num_codes:
        raise ValueError("the VQ-VAE and the two priors must share one codebook")
    if args.n < 1 or args.temperature < 0:
        raise ValueError("-n must be >= 1 and --temperature >= 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for v in range(args.n):
        start = time.perf_counter()
        codes = sample_volume(prior, volume_prior, 1, temperature=args.temperature, top_k=args.top_k,
                              seed=args.seed + v)[0]
        volume = decode_codes(vqvae, codes)[:, 0].numpy()  # (32, 256, 256) uint8
        write_nifti(volume, out / f"volume_{v:03d}.nii.gz")
        Image.fromarray(strip(volume)).save(out / f"volume_{v:03d}.png")
        print(f"volume_{v:03d}.nii.gz: {len(volume)} slices in {time.perf_counter() - start:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True)
    parser.add_argument("--prior", required=True, help="the ordinary prior (slice 0)")
    parser.add_argument("--volume-prior", help="the prior conditioned on the slice below")
    parser.add_argument("-n", type=int, default=1, help="number of volumes")
    parser.add_argument("--out", required=True)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int, default=0)
    run_or_fail(sample, parser.parse_args(argv))


if __name__ == "__main__":
    main()
