"""Reconstruct every image in a folder with a trained VQ-VAE.

    python -m train.reconstruct --model runs/vqvae/model --input DIR --out DIR [--search-sweeps 2]

Writes a same-named 8-bit PNG reconstruction for each PNG/JPEG in DIR (a .jpg input gives a
.png output of the same stem) and prints each image's SSIM. ``--figure N`` also writes
figure.png: for the first N images, input | reconstruction | |error| (the app's heat map).
Refuses an output folder that is the input folder, and inputs whose outputs would share a name
(``a.png`` and ``a.jpg``): nothing is ever overwritten by another image's reconstruction.
``--search-sweeps N`` decodes codes searched for SSIM (``vqvae/code_search.py``) instead of the
encoder's nearest ones. Figures of OASIS slices belong in a local folder, never in the repository.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqvae.data import DataError, list_images, read_slice
from vqvae.hub import load_model
from vqvae.images import error_map, slice_tensor, to_uint8, to_unit
from vqvae.metrics import image_metrics
from vqvae.model import VQVAE
from train.cli import add_search_arguments, run_or_fail, searched_codes


def check_outputs(paths: list[Path], input_dir: Path, out: Path, downsample: int, images):
    if out.resolve() == input_dir.resolve():
        raise DataError(f"--out {out} is the input folder: the reconstructions would replace the inputs")
    clashes = [stem for stem, count in Counter(p.stem for p in paths).items() if count > 1]
    if clashes:
        raise DataError(f"inputs {', '.join(sorted(clashes)[:3])} exist with several extensions; their "
                        f"reconstructions would overwrite each other ({clashes[0]}.png)")
    for path, image in zip(paths, images):
        if image.shape[0] % downsample or image.shape[1] % downsample:
            raise DataError(f"{path}: size {image.shape[1]}x{image.shape[0]} is not a multiple of {downsample}")


@torch.no_grad()
def reconstruct_folder(args):
    model = load_model(VQVAE, args.model)
    paths = list_images(args.input)
    images = [read_slice(path, size=None) for path in paths]  # read (and so validate) all before writing
    out = Path(args.out)
    check_outputs(paths, Path(args.input), out, model.downsample, images)
    out.mkdir(parents=True, exist_ok=True)
    ssims, rows = [], []
    for path, image in zip(paths, images):
        x = slice_tensor(image)
        reconstruction = model.decode(searched_codes(model, x, args))[0, 0]
        pixels = to_uint8(reconstruction)
        Image.fromarray(pixels).save(out / (path.stem + ".png"))
        ssims.append(image_metrics(to_unit(image), reconstruction.numpy())["ssim"])
        if len(rows) < args.figure:
            gray = [np.repeat(a[..., None], 3, axis=2) for a in (image, pixels)]
            rows.append(np.concatenate([*gray, error_map(image, pixels)], axis=1))
        print(f"{path.name}: SSIM {ssims[-1]:.4f}")
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out / "figure.png")
    print(f"wrote {len(paths)} reconstructions to {out} (mean SSIM {np.mean(ssims):.4f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="folder of grayscale slices")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--figure", type=int, default=0, metavar="N",
                        help="also write figure.png with input | reconstruction | error for N images")
    add_search_arguments(parser)
    run_or_fail(reconstruct_folder, parser.parse_args(argv))


if __name__ == "__main__":
    main()
