"""brainvq: reconstruct brain MRI slices through a learned discrete code, and sample new ones.

    python app.py [--model REPO_ID_OR_DIR] [--port 7860]

Weights: --model, else the BRAINVQ_MODEL environment variable (a Hugging Face Hub repo id or a
local directory with vqvae/ and prior/), else the copy bundled under assets/models.
Serves on 0.0.0.0:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise.
Gradio keeps every upload and output in its cache (GRADIO_TEMP_DIR): every BRAINVQ_CACHE_SECONDS
seconds (default 3600) the files older than that are deleted.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from gradio.utils import NamedString

from vqvae import demo
from vqvae.hub import Models, load_models, prior_description
from vqvae.upload import MAX_UPLOAD_BYTES, InputError, is_nifti, read_upload
from vqvae.volume import write_nifti

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED = ASSETS / "models"  # the weights that ship with the app
EXAMPLES = sorted(str(p) for p in (ASSETS / "examples").glob("*.png"))
# Gradio keeps every upload and output in its cache: every hour, delete files older than an hour
# (BRAINVQ_CACHE_SECONDS changes both, e.g. to a few seconds in tests).
CACHE_SECONDS = 3600
# measured (README, train.evaluate_volume, shipped volume prior): at 0.8 neighbouring slices agree as
# in real volumes (SSIM 0.941; 0.918 at 1.0) while a volume still changes bottom to top as a real
# one does (first vs last 0.616; at 0.7 it changes too little, 0.647)
VOLUME_TEMPERATURE = 0.8
# measured (README, train.compare_priors on 500 samples at T = 1.0, shipped 350-minute prior): guidance
# 1.5 towards the slice position takes the Fréchet distance from 124 to 53 (real vs real 40) and the
# position read back from 81 % to 94 % at validate's diversity; 1.75 does less (95)
SAMPLE_GUIDANCE = 1.5
TWO_DECODERS = ("**Faithful** decodes the codes to the image closest to the input (best SSIM); **realistic** "
                "decodes the same codes with a decoder trained against a discriminator: it invents "
                "plausible texture, so it looks like a scan but its fine detail is not the input's.")


SEARCH_LABEL = ("Search the codes for SSIM (about 2 s more; off: the encoder's nearest codes, "
                "the ones the prior was trained on)")


def cache_seconds() -> int:
    """BRAINVQ_CACHE_SECONDS as a whole number of seconds >= 1, else CACHE_SECONDS."""
    value = os.environ.get("BRAINVQ_CACHE_SECONDS", "").strip()
    if not value:
        return CACHE_SECONDS
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(f"BRAINVQ_CACHE_SECONDS must be a whole number of seconds >= 1, got {value!r}")
    return seconds


def shown(array: np.ndarray) -> Image.Image:
    """An output image with a unique PNG text chunk. Gradio stores each output under a name
    derived from its bytes and rewrites that file when another request produces the same bytes
    (e.g. two users clicking the same example at once), so one of them could fetch a
    half-written file; unique bytes give every response its own file."""
    image = Image.fromarray(array)
    image.info["brainvq-response"] = uuid.uuid4().hex  # written by Gradio's PNG encoder
    return image


def user_errors(fn):
    """Show InputError to the user as a gr.Error (no traceback: it is the user's input, not a
    bug); the app keeps serving."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as error:
            raise gr.Error(str(error), print_exception=False) from None
    return wrapper


def user_errors_stream(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except InputError as error:
            raise gr.Error(str(error), print_exception=False) from None
    return wrapper


class Slider(gr.Slider):
    """A slider whose cleared value (None, from an API client) reaches the function, which
    names the field in its message; Gradio's own check fails with a generic error."""
    is_template = True  # drawn by the browser as the component it extends

    def preprocess(self, payload):
        return None if payload is None else super().preprocess(payload)


class UploadFile(gr.File):
    """gr.File without Gradio 6's per-upload leak: its filepath mode creates an empty temporary
    file in the cache that it never tracks (so ``delete_cache`` cannot remove it) and returns the
    upload's own path. This returns that path, with the same file-type check."""
    is_template = True  # drawn by the browser as gr.File

    def _process_single_file(self, f):
        if self.file_types and not gr.utils.client_utils.is_valid_file(f.path, self.file_types):
            raise gr.Error(f"Invalid file type. Please upload a file that is one of these formats: {self.file_types}")
        return NamedString(f.path)


DOWNLOADS = Path(tempfile.mkdtemp(prefix="brainvq-downloads-"))  # this server's own, pruned on every write


def nifti_file(volume: np.ndarray, name: str, keep_seconds: int) -> str:
    """A volume written to a fresh .nii.gz for download. Gradio copies it into its own cache
    (emptied on schedule); the copies here older than ``keep_seconds`` are deleted first."""
    import time
    for old in DOWNLOADS.glob("*/*.nii.gz"):
        if time.time() - old.stat().st_mtime > keep_seconds:
            old.unlink(missing_ok=True)
            old.parent.rmdir()
    return str(write_nifti(volume, Path(tempfile.mkdtemp(dir=DOWNLOADS)) / name))


def build(models: Models, delete_after: int | None = None) -> gr.Blocks:
    """The page. Every ``delete_after`` seconds (default: ``cache_seconds()``) Gradio deletes the
    cached uploads and outputs older than that."""
    vqvae, prior = models.vqvae, models.prior
    seconds = delete_after or cache_seconds()
    grid = prior.grid_size
    positions = ["any"] + [str(k) for k in range(prior.num_positions)]
    colours = demo.code_colours(vqvae)
    realistic = models.realistic

    @user_errors
    def reconstruct(file, slice_index=None, search=True):
        """Upload -> input, reconstruction, error map, metrics; also fills the codebook tab."""
        if slice_index is not None:
            slice_index = demo.whole_number(slice_index, "NIfTI slice", 0, 10**6)
        image, note, count, index = read_upload(file, slice_index)
        result = demo.reconstruct_slice(vqvae, image, search=bool(search))
        summary = metrics_line("Faithful", result["metrics"])
        invented = None
        if realistic is not None:  # the same codes, drawn by the adversarially trained decoder
            other = demo.reconstruct_slice(realistic, image, result["codes"])  # same encoder: same codes
            invented = shown(other["reconstruction"])
            summary += "  \n" + metrics_line("Realistic", other["metrics"])
        summary += f"  \nInput: {note}" + ("  \nCodes searched for SSIM." if search else "")
        # the prior judges the encoder's own codes, the distribution it was trained on
        surprise_image, surprise_text = demo.surprise_view(models, image, result["encoded"])
        slider = gr.Slider(maximum=max(count - 1, 1), visible=count > 1, value=index)
        usage = pd.DataFrame(demo.code_usage(result["codes"], models.code_frequencies))
        code = demo.most_used_code(result["codes"])  # code 0 usually does not occur in the slice
        return (shown(image), shown(result["reconstruction"]), shown(result["error"]), summary, slider,
                image, result["codes"], *code_view(image, result["codes"], 1.0), usage, code,
                *show_code(image, result["codes"], code), invented, shown(surprise_image), surprise_text)

    def metrics_line(name, m):
        brain = "n/a (no brain pixels)" if np.isnan(m["ssim_brain"]) else f"{m['ssim_brain']:.4f}"
        return (f"**{name}:** SSIM {m['ssim']:.4f} &nbsp; in-brain SSIM {brain} &nbsp; "
                f"PSNR {m['psnr']:.2f} dB")

    def code_view(image, codes, opacity):
        return (shown(demo.code_map(np.asarray(codes), colours, image, float(opacity))),)

    @user_errors
    def redraw_map(image, codes, opacity):
        if image is None or codes is None:
            raise InputError("reconstruct a slice first")
        return code_view(image, codes, demo.real_number(opacity, "opacity", 0.0, 1.0))[0]

    @user_errors
    def show_code(image, codes, code):
        if image is None or codes is None:
            raise InputError("reconstruct a slice first")
        code = demo.whole_number(code, "code", 0, vqvae.num_codes - 1)
        return shown(demo.highlight_code(image, np.asarray(codes), code)), shown(demo.decode_code(vqvae, code, grid))

    @user_errors
    def pick_code(image, codes, event: gr.SelectData):
        """A click on the code map picks the code under the cursor."""
        if image is None or codes is None:
            raise InputError("reconstruct a slice first")
        code = demo.code_at(np.asarray(codes), *event.index[:2], size=image.shape[0])
        return code, *show_code(image, codes, code)

    @user_errors_stream
    def sample(n, temperature, top_k, seed, position, decoder_name="realistic", guidance=SAMPLE_GUIDANCE):
        position = None if position in (None, "any") else position
        for images, rows, total in demo.sample_stream(models, n, temperature, top_k, seed, position,
                                                      decoder_name=decoder_name, guidance=guidance):
            yield [shown(image) for image in images], f"{rows}/{total} rows sampled"

    @user_errors
    def reconstruct_whole(file):
        if file is None or not is_nifti(file):
            raise InputError("upload a NIfTI volume (.nii or .nii.gz) first")
        rebuilt, note = demo.reconstruct_volume(vqvae, file)
        return nifti_file(rebuilt, "reconstruction.nii.gz", seconds), f"Reconstructed {note}; the download holds all of them."

    @user_errors_stream
    def sample_volume(temperature, top_k, seed, decoder_name="realistic"):
        """Streams the volume as it fills (the newest slice shown), then offers the .nii.gz."""
        for slices, done, total in demo.volume_stream(models, temperature, top_k, seed, decoder_name):
            volume = np.stack(slices)
            finished = done == total
            yield (shown(slices[-1]), gr.Slider(maximum=max(done - 1, 1), value=done - 1, visible=True), volume,
                   f"{done}/{total} slices sampled" + (": scroll with the slider" if finished else ""),
                   nifti_file(volume, "brainvq_volume.nii.gz", seconds) if finished else None)

    @user_errors
    def show_volume_slice(volume, k):
        if volume is None:
            raise InputError("sample a volume first")
        k = demo.whole_number(k, "volume slice", 0, len(volume) - 1)
        return shown(volume[k])

    @user_errors_stream
    def complete(codes, keep_rows, temperature, top_k, seed, decoder_name="realistic"):
        if codes is None:
            raise InputError("reconstruct a slice first: completion starts from its codes")
        for images, rows, total in demo.sample_stream(models, 4, temperature, top_k, seed, initial=np.asarray(codes),
                                                      keep_rows=keep_rows, decoder_name=decoder_name):
            yield [shown(image) for image in images], f"{rows}/{total} rows ({keep_rows} kept from the slice)"

    with gr.Blocks(title="brainvq", delete_cache=(seconds, seconds)) as app:
        gr.Markdown(f"# brainvq\nA VQ-VAE codes each 256x256 brain MRI slice as a {grid}x{grid} grid of "
                    f"{vqvae.num_codes} codebook entries; a {prior_description(models.prior)} prior samples new grids. "
                    f"Weights: {models.source}.")
        current_image, current_codes = gr.State(None), gr.State(None)
        with gr.Tab("Reconstruction"):
            with gr.Row():
                upload = UploadFile(label="MRI slice (PNG, JPEG, or NIfTI .nii/.nii.gz)",
                                    file_types=[".png", ".jpg", ".jpeg", ".nii", ".gz"], type="filepath")
                slice_index = Slider(0, 1, value=0, step=1, label="NIfTI axial slice", visible=False)
            if EXAMPLES:
                gr.Examples(EXAMPLES, inputs=upload, label="Examples (samples this project generated)")
            with gr.Row():
                shown_input = gr.Image(label="Input", image_mode="L", format="png", interactive=False)
                shown_recon = gr.Image(label="Faithful reconstruction", image_mode="L", format="png",
                                       interactive=False)
                shown_realistic = gr.Image(label="Realistic reconstruction", image_mode="L", format="png",
                                           interactive=False, visible=realistic is not None)
                shown_error = gr.Image(label="|error| of the faithful one (full scale = 0.25)", format="png",
                                       interactive=False)
            search_codes = gr.Checkbox(value=True, label=SEARCH_LABEL)
            if realistic is not None:
                gr.Markdown(TWO_DECODERS)
            summary = gr.Markdown("Non-square or non-256x256 images are padded with black to a square "
                                  "and resized to 256x256; the note below the metrics says what was done.")
            with gr.Row():
                surprise_map = gr.Image(label="Surprise: bits beyond what the prior expected, pooled over neighbouring codes",
                                        format="png", interactive=False)
                surprise_summary = gr.Markdown()
            with gr.Row():
                whole_button = gr.Button("Reconstruct the whole NIfTI volume")
                whole_file = gr.File(label="Reconstructed volume (.nii.gz)", interactive=False)
            whole_status = gr.Markdown()
        with gr.Tab("Codebook map"):
            with gr.Row():
                code_image = gr.Image(label="Code grid: brightness = what a code decodes to, hue = which code; "
                                            "click a cell to pick its code", format="png", interactive=False)
                usage_plot = gr.BarPlot(x="code", y="share", color="source", label="Most used codes",
                                        x_label_angle=-45, sort=None)
            with gr.Row():
                opacity = Slider(0.0, 1.0, value=1.0, step=0.05, label="Code map opacity over the slice")
                code = gr.Number(label="Code", value=0, precision=0, minimum=0, maximum=vqvae.num_codes - 1)
                show = gr.Button("Show where it occurs")
            with gr.Row():
                highlighted = gr.Image(label="Where the code occurs", format="png", interactive=False)
                decoded = gr.Image(label="The code alone, decoded", image_mode="L", format="png", interactive=False)
        with gr.Tab("Sampling"):
            with gr.Row():
                n = Slider(1, 16, value=4, step=1, label="Number of samples")
                temperature = Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature (lower: smoother, less varied)")
                top_k = gr.Number(value=0, precision=0, minimum=0, label="Top-k (0 = off)")
                seed = gr.Number(value=0, precision=0, label="Seed")
                position = gr.Dropdown(positions, value="any", label="Slice position k")
                guidance = Slider(1.0, 4.0, value=SAMPLE_GUIDANCE, step=0.25,
                                  label="Guidance towards slice position k (1 = none; only with a position)")
                decoder_name = gr.Radio(list(demo.DECODERS), value="realistic", label="Decoder",
                                        visible=realistic is not None)
            with gr.Row():
                sample_button = gr.Button("Sample new brains", variant="primary")
                keep_rows = Slider(0, grid, value=grid // 2, step=1,
                                   label="Completion: rows kept from the uploaded slice")
                complete_button = gr.Button("Complete the uploaded slice")
            status = gr.Markdown()
            gallery = gr.Gallery(label="Samples", columns=4, height="auto", format="png")
            with gr.Group(visible=models.volume_prior is not None):
                slices = models.volume_prior.num_positions if models.volume_prior is not None else 0
                gr.Markdown(f"**A whole volume**: {slices} axial slices drawn bottom up, each given the one below.")
                with gr.Row():
                    volume_temperature = Slider(0.0, 2.0, value=VOLUME_TEMPERATURE, step=0.05,
                                                label="Volume temperature (lower: neighbouring slices agree more)")
                    volume_button = gr.Button("Sample a volume", variant="primary")
                    volume_status = gr.Markdown()
                with gr.Row():
                    volume_view = gr.Image(label="Volume slice", image_mode="L", format="png", interactive=False)
                    with gr.Column():
                        volume_slider = Slider(0, 1, value=0, step=1, label="Slice k", visible=False)
                        volume_file = gr.File(label="Volume (.nii.gz)", interactive=False)
            current_volume = gr.State(None)

        recon_outputs = [shown_input, shown_recon, shown_error, summary, slice_index,
                         current_image, current_codes, code_image, usage_plot, code, highlighted, decoded,
                         shown_realistic, surprise_map, surprise_summary]
        upload.change(lambda file, search: reconstruct(file, None, search), [upload, search_codes], recon_outputs,
                      api_name="reconstruct")
        slice_index.release(reconstruct, [upload, slice_index, search_codes], recon_outputs,
                            api_name="reconstruct_slice")
        search_codes.change(lambda file, index, search: (reconstruct(file, index, search) if file is not None
                                                         else [gr.skip()] * len(recon_outputs)),
                            [upload, slice_index, search_codes], recon_outputs, api_name=False)
        show.click(show_code, [current_image, current_codes, code], [highlighted, decoded], api_name="show_code")
        code_image.select(pick_code, [current_image, current_codes], [code, highlighted, decoded], api_name=False)
        opacity.release(redraw_map, [current_image, current_codes, opacity], [code_image], api_name="code_map")
        sample_button.click(sample, [n, temperature, top_k, seed, position, decoder_name, guidance], [gallery, status],
                            api_name="sample")
        whole_button.click(reconstruct_whole, [upload], [whole_file, whole_status], api_name="reconstruct_volume")
        volume_button.click(sample_volume, [volume_temperature, top_k, seed, decoder_name],
                            [volume_view, volume_slider, current_volume, volume_status, volume_file],
                            api_name="sample_volume")
        volume_slider.change(show_volume_slice, [current_volume, volume_slider], [volume_view], api_name=False)
        complete_button.click(complete, [current_codes, keep_rows, temperature, top_k, seed, decoder_name],
                              [gallery, status], api_name="complete")
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("BRAINVQ_MODEL"),
                        help="Hub repo id or local directory with vqvae/ and prior/")
    parser.add_argument("--port", type=int, help="default: GRADIO_SERVER_PORT or 7860")
    args = parser.parse_args(argv)
    try:
        seconds = cache_seconds()
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = load_models(args.model, BUNDLED)
    app = build(models, seconds)
    # Bounded queue: at most 2 jobs run at once (2 cores), at most 32 wait; memory stays bounded.
    app.queue(default_concurrency_limit=2, max_size=32)
    app.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
               server_port=args.port or int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
               max_file_size=MAX_UPLOAD_BYTES)


if __name__ == "__main__":
    main()
