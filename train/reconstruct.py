"""Reconstruct every image in a folder with a trained VQ-VAE.

    python -m train.reconstruct --model runs/vqvae/model --input DIR --out DIR

Writes a same-named 8-bit PNG reconstruction for each PNG/JPEG in DIR (a .jpg input gives a
.png output of the same stem) and prints each image's SSIM. ``--figure N`` also writes
figure.png: for the first N images, input | reconstruction | |error| (the app's heat map).
Figures of OASIS slices belong in a local folder, never in the repository.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqvae.data import DataError, list_images, read_slice
from vqvae.demo import error_map, to_uint8
from vqvae.metrics import image_metrics
from vqvae.model import VQVAE
from train.cli import fail, load_model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="folder of grayscale slices")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--figure", type=int, default=0, metavar="N",
                        help="also write figure.png with input | reconstruction | error for N images")
    args = parser.parse_args(argv)
    model = load_model(VQVAE, args.model)
    try:
        paths = list_images(args.input)
        # Read (and so validate) every image before writing anything.
        images = [read_slice(path, size=None) for path in paths]
    except DataError as error:
        fail(str(error))
    for path, image in zip(paths, images):
        if image.shape[0] % model.downsample or image.shape[1] % model.downsample:
            fail(f"{path}: size {image.shape[1]}x{image.shape[0]} is not a multiple of {model.downsample}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ssims, rows = [], []
    for path, image in zip(paths, images):
        x = torch.from_numpy(image).float().div(255.0)[None, None]
        reconstruction = model.reconstruct(x)[0][0, 0].numpy()
        pixels = to_uint8(reconstruction)
        Image.fromarray(pixels).save(out / (path.stem + ".png"))
        ssims.append(image_metrics(x[0, 0].numpy(), reconstruction)["ssim"])
        if len(rows) < args.figure:
            gray = [np.repeat(a[..., None], 3, axis=2) for a in (image, pixels)]
            rows.append(np.concatenate([*gray, error_map(image, pixels)], axis=1))
        print(f"{path.name}: SSIM {ssims[-1]:.4f}")
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out / "figure.png")
    print(f"wrote {len(paths)} reconstructions to {out} (mean SSIM {np.mean(ssims):.4f})")


if __name__ == "__main__":
    main()
