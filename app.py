"""brainvq: reconstruct brain MRI slices through a learned discrete code, and sample new ones.

    python app.py [--model REPO_ID_OR_DIR] [--port 7860]

Weights: --model, else the BRAINVQ_MODEL environment variable (a Hugging Face Hub repo id or a
local directory with vqvae/ and prior/), else the copy bundled under assets/models.
Serves on 0.0.0.0:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from vqvae import demo
from vqvae.demo import InputError
from vqvae.hub import load_models

EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "assets" / "examples").glob("*.png"))
POSITIONS = ["any"] + [str(k) for k in range(32)]


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


def build(models: demo.Models) -> gr.Blocks:
    vqvae = models.vqvae

    @user_errors
    def reconstruct(file, slice_index=None):
        """Upload -> input, reconstruction, error map, metrics; also fills the codebook tab."""
        image, note, count, index = demo.read_upload(file, None if slice_index is None else int(slice_index))
        result = demo.reconstruct_slice(vqvae, image)
        m = result["metrics"]
        brain = "n/a (no brain pixels)" if np.isnan(m["ssim_brain"]) else f"{m['ssim_brain']:.4f}"
        summary = (f"**SSIM** {m['ssim']:.4f} &nbsp; **in-brain SSIM** {brain} &nbsp; "
                   f"**PSNR** {m['psnr']:.2f} dB  \nInput: {note}")
        slider = gr.Slider(maximum=max(count - 1, 1), visible=count > 1, value=index)
        usage = pd.DataFrame(demo.code_usage(result["codes"], models.code_frequencies))
        return (shown(image), shown(result["reconstruction"]), shown(result["error"]), summary, slider,
                image, result["codes"], shown(demo.code_map(result["codes"], vqvae.num_codes)), usage)

    @user_errors
    def show_code(image, codes, code):
        if image is None or codes is None:
            raise InputError("reconstruct a slice first")
        code = int(code)
        return shown(demo.highlight_code(image, np.asarray(codes), code)), shown(demo.decode_code(vqvae, code))

    @user_errors_stream
    def sample(n, temperature, top_k, seed, position):
        position = None if position in (None, "any") else int(position)
        for images, rows, total in demo.sample_stream(models, int(n), float(temperature), int(top_k),
                                                      int(seed), position):
            yield [shown(image) for image in images], f"{rows}/{total} rows sampled"

    @user_errors_stream
    def complete(codes, keep_rows, temperature, top_k, seed):
        if codes is None:
            raise InputError("reconstruct a slice first: completion starts from its codes")
        for images, rows, total in demo.sample_stream(models, 4, float(temperature), int(top_k), int(seed),
                                                      initial=np.asarray(codes), keep_rows=int(keep_rows)):
            yield [shown(image) for image in images], f"{rows}/{total} rows ({int(keep_rows)} kept from the slice)"

    with gr.Blocks(title="brainvq") as app:
        gr.Markdown("# brainvq\nA VQ-VAE codes each 256x256 brain MRI slice as a 32x32 grid of "
                    f"{vqvae.num_codes} codebook entries; a gated PixelCNN prior samples new grids. "
                    f"Weights: {models.source}.")
        current_image, current_codes = gr.State(None), gr.State(None)
        with gr.Tab("Reconstruction"):
            with gr.Row():
                upload = gr.File(label="MRI slice (PNG, JPEG, or NIfTI .nii/.nii.gz)",
                                 file_types=[".png", ".jpg", ".jpeg", ".nii", ".gz"], type="filepath")
                slice_index = gr.Slider(0, 1, value=0, step=1, label="NIfTI axial slice", visible=False)
            if EXAMPLES:
                gr.Examples(EXAMPLES, inputs=upload, label="Examples (samples this project generated)")
            with gr.Row():
                shown_input = gr.Image(label="Input", image_mode="L", format="png", interactive=False)
                shown_recon = gr.Image(label="Reconstruction", image_mode="L", format="png", interactive=False)
                shown_error = gr.Image(label="|error| (full scale = 0.25)", format="png", interactive=False)
            summary = gr.Markdown("Non-square or non-256x256 images are padded with black to a square "
                                  "and resized to 256x256; the note below the metrics says what was done.")
        with gr.Tab("Codebook map"):
            with gr.Row():
                code_image = gr.Image(label="Code grid (one colour per code)", format="png", interactive=False)
                usage_plot = gr.BarPlot(x="code", y="share", color="source", label="Most used codes",
                                        x_label_angle=-45, sort=None)
            with gr.Row():
                code = gr.Number(label="Code", value=0, precision=0, minimum=0, maximum=vqvae.num_codes - 1)
                show = gr.Button("Show where it occurs")
            with gr.Row():
                highlighted = gr.Image(label="Where the code occurs", format="png", interactive=False)
                decoded = gr.Image(label="The code alone, decoded", image_mode="L", format="png", interactive=False)
        with gr.Tab("Sampling"):
            with gr.Row():
                n = gr.Slider(1, 16, value=4, step=1, label="Number of samples")
                temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature (lower: smoother, less varied)")
                top_k = gr.Number(value=0, precision=0, minimum=0, label="Top-k (0 = off)")
                seed = gr.Number(value=0, precision=0, label="Seed")
                position = gr.Dropdown(POSITIONS, value="any", label="Slice position k")
            with gr.Row():
                sample_button = gr.Button("Sample new brains", variant="primary")
                keep_rows = gr.Slider(0, 32, value=16, step=1, label="Completion: rows kept from the uploaded slice")
                complete_button = gr.Button("Complete the uploaded slice")
            status = gr.Markdown()
            gallery = gr.Gallery(label="Samples", columns=4, height="auto", format="png")

        recon_outputs = [shown_input, shown_recon, shown_error, summary, slice_index,
                         current_image, current_codes, code_image, usage_plot]
        upload.change(reconstruct, [upload], recon_outputs, api_name="reconstruct")
        slice_index.release(reconstruct, [upload, slice_index], recon_outputs, api_name="reconstruct_slice")
        show.click(show_code, [current_image, current_codes, code], [highlighted, decoded], api_name="show_code")
        sample_button.click(sample, [n, temperature, top_k, seed, position], [gallery, status], api_name="sample")
        complete_button.click(complete, [current_codes, keep_rows, temperature, top_k, seed],
                              [gallery, status], api_name="complete")
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("BRAINVQ_MODEL"),
                        help="Hub repo id or local directory with vqvae/ and prior/")
    parser.add_argument("--port", type=int, help="default: GRADIO_SERVER_PORT or 7860")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = load_models(args.model)
    app = build(models)
    # Bounded queue: at most 2 jobs run at once (2 cores), at most 32 wait; memory stays bounded.
    app.queue(default_concurrency_limit=2, max_size=32)
    app.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
               server_port=args.port or int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
               max_file_size=demo.MAX_UPLOAD_BYTES)


if __name__ == "__main__":
    main()
