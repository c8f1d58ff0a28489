"""Every bad (and unusual) upload from vqvae/testing.py sent to the running app through
gradio_client; prints what the user saw for each, then checks the app still serves.

    python -m benchmarks.bad_uploads [--model DIR_OR_REPO]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.app_latency import peak_rss_mb, start_app
from vqvae.testing import BAD_UPLOADS, GOOD_UPLOADS, write


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bad_uploads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    args = parser.parse_args()
    from gradio_client import Client, handle_file
    folder = Path(tempfile.mkdtemp())
    with start_app(args.model) as (url, pid, _):
        client = Client(url, verbose=False)
        print("| upload | what the user saw |\n| --- | --- |")
        for kind, name, make, *_ in BAD_UPLOADS + GOOD_UPLOADS:
            path = write(folder, name, make)
            try:
                result = client.predict(handle_file(str(path)), api_name="/reconstruct")
                seen = "reconstructed; " + result[3].replace("\n", " ").replace("&nbsp;", "").replace("**", "")
            except Exception as error:  # the gr.Error text reaches the client as the exception message
                seen = f"error: {error}"
            print(f"| {kind} | {seen} |")
        alive = client.predict(handle_file(str(write(folder, GOOD_UPLOADS[1][1], GOOD_UPLOADS[1][2]))),
                               api_name="/reconstruct")
        print(f"\napp still serving afterwards: {'SSIM' in alive[3]}; server peak RSS {peak_rss_mb(pid):.0f} MB")


if __name__ == "__main__":
    main()
