"""The app end to end: launched as `python app.py`, driven through gradio_client, and in a real
headless Chromium (skipped where Debian's chromium is not installed; in CI that fails: tests/strict.py)."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import BUNDLED
from tests.strict import import_or_skip, require
from vqvae.testing import synthetic_slice

ROOT = Path(__file__).resolve().parents[1]
# Screenshots land in the test's temp folder; BRAINVQ_SCREENSHOTS=1 writes the committed ones.
SCREENSHOTS_COMMITTED = ROOT / "assets" / "screenshots"


_SERVER_PID = [None]  # the running app's process id, for memory checks


def server_pid():
    return _SERVER_PID[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    """The app on the bundled weights where this checkout has them, else on tiny random ones."""
    from vqvae.hub import is_weights_dir
    weights = BUNDLED if is_weights_dir(BUNDLED) else tiny_weights
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "app.py", "--model", str(weights), "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"app exited:\n{log.read_text()}")
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"app did not start:\n{log.read_text()}")
    _SERVER_PID[0] = process.pid
    yield url
    process.terminate()
    process.wait(timeout=20)
    # No traceback through our code. (Gradio itself can log an h11 "Too much data for declared
    # Content-Length" when concurrent clients fetch an identical output file while it is
    # rewritten; the clients still get their results, and the load test checks that.)
    tracebacks = log.read_text().split("Traceback")[1:]
    ours = [t for t in tracebacks if f"{ROOT}/app.py" in t or f"{ROOT}/vqvae/" in t]
    assert not ours, ours[0][-3000:]


@pytest.fixture(scope="module")
def slice_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "slice.png"
    Image.fromarray(synthetic_slice(np.random.default_rng(3), 256)).save(path)
    return path


def test_every_endpoint_through_gradio_client(server, slice_png, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(server, verbose=False)
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/reconstruct", "/show_code", "/sample", "/complete"} <= names
    result = client.predict(handle_file(str(slice_png)), api_name="/reconstruct")
    assert "SSIM" in result[3] and Path(result[1]).is_file()
    highlighted, decoded = client.predict(3, api_name="/show_code")
    assert Path(highlighted).is_file() and Path(decoded).is_file()
    gallery, status = client.predict(2, 1.0, 0, 7, "5", api_name="/sample")
    assert len(gallery) == 2 and status == "32/32 rows sampled"
    gallery, status = client.predict(16, 1.0, 0, 1, api_name="/complete")
    assert len(gallery) == 4 and "16 kept" in status


def test_bad_upload_is_a_visible_error_and_the_app_keeps_serving(server, slice_png, tmp_path):
    from gradio_client import Client, handle_file
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="not a readable PNG or JPEG"):
        client.predict(handle_file(str(bad)), api_name="/reconstruct")
    assert "SSIM" in client.predict(handle_file(str(slice_png)), api_name="/reconstruct")[3]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_in_a_real_browser(server, slice_png, tmp_path):
    require(chromium(), "Debian's chromium is not installed")
    playwright = import_or_skip("playwright.sync_api")
    SCREENSHOTS = SCREENSHOTS_COMMITTED if os.environ.get("BRAINVQ_SCREENSHOTS") else tmp_path
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server, wait_until="load")
        page.locator("input[type=file]").first.set_input_files(str(slice_png))
        page.get_by_text("in-brain SSIM").wait_for(timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / "reconstruction.png"), full_page=True)
        page.get_by_role("tab", name="Codebook map").click()
        page.get_by_role("button", name="Show where it occurs").click()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(SCREENSHOTS / "codebook.png"), full_page=True)
        page.get_by_role("tab", name="Sampling").click()
        page.get_by_role("button", name="Sample new brains").click()
        page.get_by_text("32/32 rows sampled").wait_for(timeout=120_000)
        page.screenshot(path=str(SCREENSHOTS / "sampling.png"), full_page=True)
        browser.close()
    # the closed network makes Chromium log failed fetches of external resources; those are not app errors
    app_errors = [e for e in errors if "net::ERR" not in e and "Failed to load resource" not in e]
    assert not app_errors, app_errors


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_concurrent_clients_mixing_uploads_and_sampling(server, tmp_path):
    """6 clients at once, reconstructing and sampling twice (loopback only, bounded): no
    errors, every returned image decodes, and the server's memory stays bounded.

    Clients 0-2 upload the very same slice and sample with the same seed: Gradio names a cached
    output by its bytes and rewrites the file when another request produces the same bytes, so
    without the app's unique outputs (app.shown) one of them could fetch a half-written file."""
    import threading

    from gradio_client import Client, handle_file
    url = server
    errors = []

    uploads = []
    for seed in range(6):
        uploads.append(tmp_path / f"slice_{seed}.png")
        Image.fromarray(synthetic_slice(np.random.default_rng(100 + max(seed, 2)), 256)).save(uploads[-1])

    def client_work(seed):
        try:
            client = Client(url, verbose=False)
            for round_ in range(2):
                result = client.predict(handle_file(str(uploads[seed])), api_name="/reconstruct")
                assert "SSIM" in result[3]
                for path in result[:3]:
                    Image.open(path).load()
                gallery, status = client.predict(2, 1.0, 0, max(seed, 2) * 10 + round_, "any", api_name="/sample")
                assert len(gallery) == 2
                for item in gallery:
                    Image.open(item["image"]).load()
        except Exception as error:  # collected and reported below
            errors.append(repr(error))
    before = rss_mb(server_pid())
    threads = [threading.Thread(target=client_work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    peak = rss_mb(server_pid(), "VmHWM")
    assert peak < max(2 * before, before + 1500), (before, peak)
