"""Rate–distortion table: VQ-VAEs at downsampling factors f = 4, 8, 16 on the validate split.

    python -m train.rd_table --data ../shared/oasis --out runs/rd --minutes 8
    python -m train.rd_table --data ../shared/oasis --out runs/rd --model 8=runs/vqvae30/model

Arguments it does not know (e.g. ``--codes 256 --batch-size 8``) go to every ``train.vqvae`` run.

Each factor is trained with the same settings and the same training-time budget into
OUT/f<f>/ (skipped when OUT/f<f>/model already exists, so an interrupted table resumes), unless
``--model F=DIR`` names a trained one. Rate is log2(K) bits per code over f*f pixels; the other
columns are those of ``train.evaluate`` on the whole split. Writes OUT/rd_table.json and prints
a Markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqvae.data import load_split
from vqvae.hub import load_model
from vqvae.metrics import evaluate_reconstructions
from vqvae.model import VQVAE
from vqvae.trainers import VQVAETraining, train_vqvae
from train.cli import config_from, config_parser, fail, run_or_fail

COLUMNS = [("f", "{:d}"), ("grid", "{}"), ("bits_per_pixel", "{:.4f}"), ("ssim", "{:.4f}"),
           ("ssim_brain", "{:.4f}"), ("psnr", "{:.2f}"), ("usage", "{:.1%}"), ("minutes", "{}")]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[name]) for name, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def parse_models(pairs: list[str]) -> dict[int, str]:
    models = {}
    for pair in pairs:
        factor, _, folder = pair.partition("=")
        if not factor.isdigit() or not folder:
            fail(f"--model takes F=DIR (e.g. 8=runs/vqvae/model), got {pair!r}")
        models[int(factor)] = folder
    return models


def rd_rows(args, trainer_args: list[str]) -> list[dict]:
    given = parse_models(args.model)
    out = Path(args.out)
    validate = load_split(args.data, "validate", limit=args.limit, progress=not args.no_progress)
    trainer_parser = config_parser(VQVAETraining, None)
    rows = []
    for factor in args.factors:
        folder = Path(given.get(factor, out / f"f{factor}" / "model"))
        minutes = "given" if factor in given else args.minutes
        if factor not in given and not (folder / "model.safetensors").exists():
            train_args = ["--data", args.data, "--out", str(folder.parent), "--minutes", str(args.minutes),
                          "--downsample", str(factor), "--eval-minutes", str(args.minutes)]
            train_args += ["--limit", str(args.limit)] if args.limit else []
            train_args += (["--no-progress"] if args.no_progress else []) + trainer_args
            print(f"training f={factor} for {args.minutes} min into {folder.parent}")
            train_vqvae(config_from(VQVAETraining, trainer_parser.parse_args(train_args)))
        model = load_model(VQVAE, folder)
        metrics = evaluate_reconstructions(model, validate.images, progress=not args.no_progress)
        grid = validate.images.shape[-1] // model.downsample
        rows.append({"f": model.downsample, "grid": f"{grid}x{grid}", "codes": model.num_codes,
                     "bits_per_pixel": model.bits_per_pixel, "minutes": minutes, "model": str(folder),
                     **metrics})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 8, 16], choices=(4, 8, 16))
    parser.add_argument("--minutes", type=float, default=8.0, help="training-time budget per factor")
    parser.add_argument("--model", action="append", default=[], metavar="F=DIR",
                        help="use this trained model for factor F instead of training one")
    parser.add_argument("--limit", type=int, help="only the first N images of each split")
    parser.add_argument("--no-progress", action="store_true")
    args, trainer_args = parser.parse_known_args(argv)
    rows = run_or_fail(rd_rows, args, trainer_args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rd_table.json").write_text(json.dumps(rows, indent=2))
    print(f"\nvalidate ({rows[0]['images']} slices); rate = log2(K)/f^2 bits per pixel")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
