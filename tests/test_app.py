"""The app end to end: launched as `python app.py`, driven through gradio_client, and in a real
headless Chromium (skipped where Debian's chromium is not installed; in CI that fails: tests/strict.py)."""
import contextlib
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
_SERVER_WEIGHTS = [None]  # the weights it serves, for checks that recompute its results


def server_pid():
    return _SERVER_PID[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(weights: Path, log: Path, **env):
    """``python app.py`` on a free loopback port with ``env`` added to its environment; yields
    (url, process). Afterwards: no traceback through our code in its log. (Gradio itself can log
    an h11 "Too much data for declared Content-Length" when concurrent clients fetch an identical
    output file while it is rewritten; the clients still get their results, and the load test
    checks that.)"""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", **env}
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "app.py", "--model", str(weights), "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
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
            pytest.fail(f"app did not start:\n{log.read_text()}")
        yield f"http://127.0.0.1:{port}/", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
    tracebacks = log.read_text().split("Traceback")[1:]
    ours = [t for t in tracebacks if f"{ROOT}/app.py" in t or f"{ROOT}/vqvae/" in t]
    assert not ours, ours[0][-3000:]


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    """The app on the bundled weights where this checkout has them, else on tiny random ones."""
    from vqvae.hub import is_weights_dir
    weights = BUNDLED if is_weights_dir(BUNDLED) else tiny_weights
    with running_app(weights, tmp_path_factory.mktemp("app") / "app.log") as (url, process):
        _SERVER_PID[0], _SERVER_WEIGHTS[0] = process.pid, weights
        yield url


@pytest.fixture(scope="module")
def slice_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "slice.png"
    Image.fromarray(synthetic_slice(np.random.default_rng(3), 256)).save(path)
    return path


# /reconstruct's outputs as the client sees them: app.py's recon_outputs less the two gr.State.
RECON = ["input", "reconstruction", "error", "summary", "slice", "code_map", "usage", "code",
         "highlighted", "decoded"]


def test_every_endpoint_through_gradio_client(server, slice_png, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(server, verbose=False)
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/reconstruct", "/reconstruct_slice", "/show_code", "/sample", "/complete", "/code_map"} <= names
    result = client.predict(handle_file(str(slice_png)), api_name="/reconstruct")
    assert "SSIM" in result[3] and Path(result[1]).is_file()
    assert "Codes searched for SSIM" in result[3]  # the checkbox's default
    nearest = client.predict(handle_file(str(slice_png)), False, api_name="/reconstruct")
    assert "SSIM" in nearest[3] and "searched" not in nearest[3]
    highlighted, decoded = client.predict(3, api_name="/show_code")
    assert Path(highlighted).is_file() and Path(decoded).is_file()
    gallery, status = client.predict(2, 1.0, 0, 7, "5", api_name="/sample")
    assert len(gallery) == 2 and status == "32/32 rows sampled"
    gallery, status = client.predict(16, 1.0, 0, 1, api_name="/complete")
    assert len(gallery) == 4 and "16 kept" in status


def test_code_map_redraws_at_another_opacity(server, slice_png):
    from gradio_client import Client, handle_file
    client = Client(server, verbose=False)
    result = client.predict(handle_file(str(slice_png)), api_name="/reconstruct")
    opaque = np.asarray(Image.open(result[RECON.index("code_map")]).convert("RGB")).astype(int)
    faint = np.asarray(Image.open(client.predict(0.25, api_name="/code_map")).convert("RGB")).astype(int)
    assert faint.shape == opaque.shape == (256, 256, 3)
    slice_ = np.asarray(Image.open(result[0]).convert("RGB")).astype(int)
    # a quarter of the map over three quarters of the slice
    assert np.abs(faint - (0.25 * opaque + 0.75 * slice_)).max() <= 1


def test_codebook_tab_starts_at_the_slices_most_used_code(server, slice_png):
    """/reconstruct picks the slice's most frequent code (not code 0, which may not occur at
    all) and returns where it occurs and what it decodes to."""
    from gradio_client import Client, handle_file

    from vqvae import demo
    from vqvae.hub import load_models
    from vqvae.upload import read_upload
    # the encoder's nearest codes (search off), which the local check below recomputes
    out = dict(zip(RECON, Client(server, verbose=False).predict(handle_file(str(slice_png)), False,
                                                               api_name="/reconstruct")))
    assert len(out) == len(RECON) and "SSIM" in out["summary"]
    code = out["code"]
    assert isinstance(code, int)
    # the server's own counts: the usage chart lists the slice's codes, most used first
    shares = {int(c): share for c, source, share in out["usage"]["data"] if source == "this slice"}
    assert max(shares, key=shares.get) == code
    # the highlight tints exactly that code's cells red (grey elsewhere: R == G)
    highlighted = np.asarray(Image.open(out["highlighted"]).convert("RGB")).astype(int)
    tinted = (highlighted[..., 0] > highlighted[..., 1]).mean()
    assert tinted > 0 and tinted == pytest.approx(shares[code], abs=1e-9)
    decoded = np.asarray(Image.open(out["decoded"]))
    assert decoded.shape == (256, 256)
    # and recomputed here on the same weights: the most used code (up to a near tie that float
    # differences between two processes' thread counts could flip)
    models = load_models(str(_SERVER_WEIGHTS[0]), None)
    codes = demo.reconstruct_slice(models.vqvae, read_upload(slice_png)[0])["codes"]
    counts = np.bincount(codes.ravel(), minlength=models.vqvae.num_codes)
    assert counts[code] >= counts.max() - 2 and abs(counts[code] / codes.size - shares[code]) < 3 / codes.size
    assert np.array_equal(decoded, demo.decode_code(models.vqvae, code, codes.shape[0]))


def test_bad_upload_is_a_visible_error_and_the_app_keeps_serving(server, slice_png, tmp_path):
    from gradio_client import Client, handle_file
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="not a readable PNG or JPEG"):
        client.predict(handle_file(str(bad)), api_name="/reconstruct")
    assert "SSIM" in client.predict(handle_file(str(slice_png)), api_name="/reconstruct")[3]


@pytest.mark.parametrize("api_name, args, message", [
    pytest.param("/sample", (4, 1.0, 0, None, "16"), "seed is empty", id="sample-seed-cleared"),
    pytest.param("/sample", (4, 1.0, 0, 2**64, "16"), "seed must be from 0 to 9223372036854775807",
                 id="sample-seed-2**64"),
    pytest.param("/sample", (4, 1.0, 0, -1, "any"), "seed must be from 0 to", id="sample-seed-negative"),
    pytest.param("/sample", (4, 1.0, None, 1, "any"), "top-k is empty", id="sample-top_k-cleared"),
    pytest.param("/sample", (4, 1.0, 0, 1, "16", "faithful", None), "guidance is empty", id="sample-guidance-cleared"),
    pytest.param("/complete", (16, 1.0, 0, 2**64), "seed must be from 0 to", id="complete-seed-2**64"),
    pytest.param("/show_code", (None,), "code is empty", id="show_code-cleared"),
    pytest.param("/show_code", (10**6,), r"(code must be from 0 to|greater than maximum value) \d+",
                 id="show_code-too-big"),  # Gradio's own bounds check answers first
])
def test_bad_fields_are_visible_errors_and_the_app_keeps_serving(server, slice_png, api_name, args, message):
    """Every field is checked into a one-line message that reaches the client (gr.Error), and
    the next good request is served."""
    from gradio_client import Client, handle_file
    client = Client(server, verbose=False)
    if api_name != "/sample":  # these start from the session's reconstructed slice
        client.predict(handle_file(str(slice_png)), api_name="/reconstruct")
    with pytest.raises(Exception, match=message) as caught:
        client.predict(*args, api_name=api_name)
    assert "Traceback" not in str(caught.value)
    gallery, status = client.predict(1, 1.0, 0, 3, "16", api_name="/sample")
    assert len(gallery) == 1 and status == "32/32 rows sampled"


@pytest.mark.parametrize("api_name, args, field", [
    pytest.param("/sample", (None, 1.0, 0, 1, "any"), "number of samples", id="sample-n"),
    pytest.param("/sample", (4, None, 0, 1, "any"), "temperature", id="sample-temperature"),
    pytest.param("/complete", (None, 1.0, 0, 1), "rows to keep", id="complete-keep_rows"),
    pytest.param("/code_map", (None,), "opacity", id="code_map-opacity"),
])
def test_cleared_slider_values_are_named_in_the_message(server, slice_png, api_name, args, field):
    """A slider cannot be cleared in the page, but an API client can send None: the message
    names the field, as for every other input, not Gradio's generic "upstream Gradio app has
    raised an exception" (its Slider compares None with its bounds before the app sees it)."""
    from gradio_client import Client, handle_file
    client = Client(server, verbose=False)
    if api_name != "/sample":
        client.predict(handle_file(str(slice_png)), api_name="/reconstruct")
    with pytest.raises(Exception, match=field):
        client.predict(*args, api_name=api_name)
    gallery, status = client.predict(1, 1.0, 0, 3, "16", api_name="/sample")
    assert len(gallery) == 1 and status == "32/32 rows sampled"


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
        page.get_by_text("in-brain SSIM").first.wait_for(timeout=60_000)
        page.get_by_text("Surprise under the prior").wait_for(timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "reconstruction.png"), full_page=True)
        page.get_by_role("tab", name="Codebook map").click()
        page.get_by_role("button", name="Show where it occurs").click()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(SCREENSHOTS / "codebook.png"), full_page=True)
        page.get_by_role("tab", name="Sampling").click()
        page.get_by_role("button", name="Sample new brains").click()
        page.get_by_text("32/32 rows sampled").wait_for(timeout=120_000)
        page.screenshot(path=str(SCREENSHOTS / "sampling.png"), full_page=True)
        volume_button = page.get_by_role("button", name="Sample a volume")
        if volume_button.is_visible():  # weights with a volume prior
            volume_button.click()
            page.get_by_text("slices sampled: scroll with the slider").wait_for(timeout=180_000)
            page.screenshot(path=str(SCREENSHOTS / "volume.png"), full_page=True)
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


def cached_files(folder: Path) -> set[str]:
    """Every file under Gradio's cache folder (its per-file folders are left behind, empty)."""
    return {os.path.join(root, name) for root, _, names in os.walk(folder) for name in names}


def test_cache_is_deleted_on_schedule_under_load(tiny_weights, tmp_path):
    """Gradio keeps every upload and output (here ~11 files per reconstruct + sample); with
    delete_cache it deletes, every `interval` seconds, the files older than `interval` (by
    ctime, gradio/route_utils.py delete_files_on_schedule). The app's interval comes from
    BRAINVQ_CACHE_SECONDS: at 3 s, ~20 s of load must leave only the last few seconds' files,
    and once the load stops the cache empties within two intervals (plus one for slack)."""
    from gradio_client import Client, handle_file
    interval, load_seconds, rounds = 3, 20.0, 24
    cache = tmp_path / "gradio_cache"
    with running_app(tiny_weights, tmp_path / "app.log", GRADIO_TEMP_DIR=str(cache),
                     BRAINVQ_CACHE_SECONDS=str(interval)) as (url, _):
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        seen = cached_files(cache)
        counts = []
        start = time.monotonic()
        for i in range(rounds):  # ~2 requests a second, each with unique outputs (app.shown)
            if time.monotonic() - start > load_seconds:
                break
            upload = tmp_path / f"slice_{i}.png"
            Image.fromarray(synthetic_slice(np.random.default_rng(1000 + i), 256)).save(upload)
            # search off: this test is about the cache, and needs ~2 requests a second
            assert "SSIM" in client.predict(handle_file(str(upload)), False, api_name="/reconstruct")[3]
            gallery, _ = client.predict(1, 1.0, 0, i, "any", api_name="/sample")
            assert len(gallery) == 1
            now = cached_files(cache)
            seen |= now
            counts.append(len(now))
            time.sleep(max(0.0, start + (i + 1) * load_seconds / rounds - time.monotonic()))
        assert len(counts) >= 8, f"only {len(counts)} rounds in {load_seconds} s"
        produced = len(seen)
        assert produced >= 8 * len(counts), (produced, counts)  # the load did make files
        # during the load the count levels off: files live 1-2 intervals, not for ever
        assert max(counts) < produced / 2, (produced, counts)
        assert max(counts[len(counts) // 2:]) <= max(counts[:len(counts) // 2]) + 3 * produced / len(counts), counts
        # after it, the cache empties: everything is older than an interval by the next tick but one
        def tracked_and_stray():
            left = cached_files(cache)
            stray = stray_files(cache, left)
            return left - stray, stray
        deadline = time.monotonic() + 3 * interval
        while tracked_and_stray()[0] and time.monotonic() < deadline:
            time.sleep(0.25)
        tracked, stray = tracked_and_stray()
        assert len(tracked) <= produced / 20, (len(tracked), produced, sorted(tracked)[:5])
        # and the app still serves, with a fresh file
        assert "SSIM" in client.predict(handle_file(str(upload)), api_name="/reconstruct")[3]
    # Files that Gradio never tracks are never deleted, so they grow without bound. gr.File with
    # type="filepath" creates one per call (gradio/components/file.py _process_single_file: an
    # unused NamedTemporaryFile(delete=False, dir=GRADIO_CACHE)): one empty file per upload.
    assert not stray, (f"{len(stray)} untracked files left in GRADIO_TEMP_DIR after {len(counts)} "
                       f"uploads (gr.File(type='filepath') preprocessing): {sorted(stray)[:3]}")


def stray_files(folder: Path, files: set[str]) -> set[str]:
    """Files directly in the cache folder: Gradio stores what it tracks (uploads, outputs,
    examples) in per-file folders named by a hash, so these are ones it does not delete."""
    return {f for f in files if Path(f).parent == folder}


def test_volumes_through_the_app(tiny_weights, tmp_path):
    """With a volume prior in the weights: a sampled volume streams in and downloads as NIfTI that
    reads back with the sampled slice count; an uploaded NIfTI is reconstructed whole."""
    from gradio_client import Client, handle_file
    nibabel = import_or_skip("nibabel")
    from vqvae.hub import VOLUME_PRIOR
    from vqvae.prior import GatedPixelCNN
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    GatedPixelCNN(num_codes=16, channels=8, layers=2, num_positions=4, previous_slice=4).save_pretrained(
        weights / VOLUME_PRIOR)
    with running_app(weights, tmp_path / "app.log") as (url, _):
        client = Client(url, verbose=False)
        job = client.submit(1.0, 0, 5, "faithful", api_name="/sample_volume")
        outputs = list(job)
        assert len(outputs) >= 2  # streamed: slices arrive before the volume is done
        *_, status, download = job.result()
        assert "4/4 slices" in status
        assert nibabel.load(download).shape == (256, 256, 4)
        upload_path = tmp_path / "upload.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.random.default_rng(0).random((40, 40, 3)).astype(np.float32), np.eye(4)),
                     str(upload_path))
        whole, note = client.predict(handle_file(str(upload_path)), api_name="/reconstruct_volume")
        assert nibabel.load(whole).shape == (256, 256, 3) and "3 slices" in note
