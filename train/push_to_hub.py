"""Package a trained VQ-VAE and prior as one weights folder with a model card, and upload it.

    python -m train.push_to_hub --vqvae runs/vqvae/model --prior runs/prior/model --repo-id USER/brainvq
    python -m train.push_to_hub --vqvae runs/vqvae/model --prior runs/prior/model --out assets/models

The folder holds vqvae/ and prior/ (Hub layout) and README.md, a model card whose metadata
(license, tags, dataset, metrics) comes from the runs' own logs: the last evaluation in each
run's metrics.jsonl, and RUN_DIR/validate.json from train.evaluate --json where present.
With --generation (train.evaluate_generation's report.json) the card also shows the generation
metrics, and --features adds the SliceCNN those metrics use as position_net/.
With --out only, nothing is uploaded (this is how assets/models is made).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from vqvae.generation import generation_table
from vqvae.hub import (REALISTIC, TRAINING, VOLUME_PRIOR, is_model_dir, load_prior, prior_description, run_summary,
                       stages_of)
from train.cli import fail, run_or_fail

CITATION = ("Marcus, D. S., Wang, T. H., Parker, J., Csernansky, J. G., Morris, J. C., Buckner, R. L. "
            "(2007). Open Access Series of Imaging Studies (OASIS): Cross-sectional MRI Data in Young, "
            "Middle Aged, Nondemented, and Demented Older Adults. Journal of Cognitive Neuroscience, "
            "19(9), 1498-1507.")


def model_card(vqvae: dict, prior: dict, machine: str, generation: dict | None = None,
               realistic: dict | None = None, volume_prior: dict | None = None,
               prior_description: str = "gated PixelCNN") -> str:
    validate = vqvae.get("validate", vqvae.get("last_eval", {}))
    prior_eval = prior.get("last_eval", {})
    results = []
    for name, value in (("ssim", validate.get("ssim")), ("ssim_brain", validate.get("ssim_brain")),
                        ("psnr", validate.get("psnr")), ("codebook_usage", validate.get("usage")),
                        ("prior_nll_bits_per_code", prior_eval.get("nll_bits"))):
        if value is not None:
            results.append(f"      - type: {name}\n        value: {value:.4f}")
    lines = ["---", "license: mit", "library_name: brainvq", "tags:", "  - vq-vae", "  - pixelcnn",
             "  - brain-mri", "  - oasis", "datasets:", "  - OASIS-1 (keras_png_slices_data)", "model-index:",
             "  - name: brainvq", "    results:", "    - task:", "        type: image-reconstruction",
             "      dataset:", "        name: OASIS-1 validate split", "        type: oasis",
             "      metrics:", *results, "---", "",
             "# brainvq weights", "",
             "A VQ-VAE (`vqvae/`) that codes 256x256 brain MRI slices as 32x32 grids of codebook indices, "
             f"and a {prior_description} prior (`prior/`) over those grids, conditioned on slice position.",
             "Load with `vqvae.load_model(VQVAE, \"vqvae\")` / `vqvae.load_prior(\"prior\")` (strict; the prior's class "
             "comes from its config.json) from the brainvq package.", "",
             "## Training", "", f"Trained on the OASIS train split (9664 slices) on {machine}.", ""]
    parts = [("VQ-VAE", vqvae), ("Prior", prior)]
    parts += [("Realistic decoder (vqvae-realistic/)", realistic)] if realistic is not None else []
    parts += [("Volume prior (prior-volume/)", volume_prior)] if volume_prior is not None else []
    for title, summary in parts:
        lines.append(f"- {title}: " + "; then ".join(stages_of(summary)))
    lines += ["", "## Validate metrics", "", "| metric | value |", "| --- | --- |"]
    for key, value in {**validate, **{f"prior_{k}": v for k, v in prior_eval.items()}}.items():
        if isinstance(value, float):
            lines.append(f"| {key} | {value:.4f} |")
    if generation:
        lines += ["", f"## Generation metrics ({generation['images']} samples vs validate, "
                  f"temperature {generation['temperature']}"
                  + (f", guidance {generation['guidance']:g} towards the slice position"
                     if generation.get("guidance", 1.0) != 1.0 else "") + ")", "", generation_table(generation), "",
                  "Made by `python -m train.evaluate_generation` or `python -m train.compare_priors` (the same "
                  "measures, `vqvae.generation.sample_metrics`); the Fréchet distance uses `position_net/`, "
                  "a small CNN trained on OASIS train to predict the slice position."]
    lines += ["", "SSIM is scikit-image's `structural_similarity(x, y, data_range=1.0)` on [0, 1] images; "
              "in-brain SSIM averages the SSIM map over the head only.", "", "## Data and citation", "",
              "OASIS-1 cross-sectional MRI, preprocessed 2-D slice release. " + CITATION, ""]
    return "\n".join(lines)


def packaged_summary(model_dir: Path) -> dict:
    """What travels with a packaged model (its training.json) and what the card is written
    from: its run's summary with the lineage resolved into stages, without the run's config."""
    summary = run_summary(model_dir)
    return {**{k: v for k, v in summary.items() if k != "config"}, "stages": stages_of(summary)}


def package(vqvae_dir: Path, prior_dir: Path, out: Path, machine: str, generation: Path | None = None,
            features: Path | None = None, realistic: Path | None = None, volume_prior: Path | None = None) -> Path:
    folders = {"vqvae": vqvae_dir, "prior": prior_dir, **({"position_net": features} if features else {}),
               **({REALISTIC: realistic} if realistic else {}), **({VOLUME_PRIOR: volume_prior} if volume_prior else {})}
    for path in folders.values():
        if not is_model_dir(path):
            raise ValueError(f"{path} is not a model directory (needs config.json and model.safetensors)")
    out.mkdir(parents=True, exist_ok=True)
    # every lineage is read before any folder is replaced: a prior continued from the packaged
    # one (--init assets/models/prior) follows its --init into the folder it is about to replace
    packaged = {name: packaged_summary(source) for name, source in folders.items()}
    for name, source in folders.items():
        target = out / name
        if target.resolve() != Path(source).resolve():  # re-packaging in place keeps the folder
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        (target / TRAINING).write_text(json.dumps(packaged[name], indent=2))
    report = json.loads(generation.read_text()) if generation else None
    (out / "README.md").write_text(model_card(packaged["vqvae"], packaged["prior"], machine, report,
                                              packaged.get(REALISTIC), packaged.get(VOLUME_PRIOR),
                                              prior_description(load_prior(out / "prior"))))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", required=True, type=Path)
    parser.add_argument("--prior", required=True, type=Path)
    parser.add_argument("--generation", type=Path, help="report.json of train.evaluate_generation")
    parser.add_argument("--features", type=Path, help="the SliceCNN of the generation metrics")
    parser.add_argument("--realistic", type=Path, help="the adversarially trained decoder (same encoder and codebook)")
    parser.add_argument("--volume-prior", type=Path, help="the prior conditioned on the slice below (volumes)")
    parser.add_argument("--repo-id", help="Hub repo to upload to (needs a token: huggingface-cli login)")
    parser.add_argument("--out", type=Path, help="write the folder here (and upload it only with --repo-id)")
    parser.add_argument("--machine", default="a 2-core AMD Zen 4 CPU (no GPU)")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    if not args.repo_id and not args.out:
        fail("give --repo-id to upload, --out to write the folder, or both")
    folder = run_or_fail(package, args.vqvae, args.prior, args.out or Path(tempfile.mkdtemp()), args.machine,
                         args.generation, args.features, args.realistic, args.volume_prior)
    print(f"packaged weights and model card in {folder}")
    if args.repo_id:
        from huggingface_hub import HfApi
        try:
            api = HfApi()
            api.create_repo(args.repo_id, private=args.private, exist_ok=True)
            api.upload_folder(repo_id=args.repo_id, folder_path=str(folder), commit_message="brainvq weights")
        except Exception as error:  # no token, no network, no permission
            fail(f"upload to {args.repo_id} failed: {error}")
        print(f"uploaded to https://huggingface.co/{args.repo_id}")


if __name__ == "__main__":
    main()
