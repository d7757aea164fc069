"""The demo page in real headless Chromium against a real server with a tiny random model.

What is checked is what a person sees: frames appearing, the final grid being the seed's images, the
slider moving through frames, Cancel stopping the server's work, the noise panel, errors on the page.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server_utils import ROOT, Server, decode_png, start_server

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
API = "/api/v1"
ARTIFACTS = ROOT / "artifacts"
TIMEOUT_MS = 30_000
MAX_BATCH = 16

if not Path(CHROMIUM).exists():  # CI (.ci/run) installs it; say how rather than fail obscurely
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)

from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright  # noqa: E402


def browser_model_file(path: Path) -> Path:
    """A tiny random 28×28 model whose card says MNIST-5k, so the page also offers dataset samples."""
    import torch

    from engine import ModelCard, build_model, preset_config, save_model_file

    torch.manual_seed(0)
    cfg = preset_config("tiny", image_size=28)
    card = ModelCard(model=cfg, data={"dataset": "mnist5k", "value_range": [-1, 1]}, name="tiny-browser-test")
    return save_model_file(path, build_model(cfg), card)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return browser_model_file(tmp_path_factory.mktemp("m") / "tiny28.safetensors")


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory) -> Iterator[Server]:
    # two jobs stepped at once and one waiting: small enough that a test can fill the queue and see a 429; and
    # room for the likelihoods that pages of earlier tests left running (each image the noise panel shows asks
    # for one, and this untrained model's ODE is stiff), so that none of them answers 429 to a later test's page
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDPM_MAX_LIKELIHOOD_JOBS", "8")
        s = start_server(model_file, tmp_path_factory.mktemp("log") / "server.log", "--max-batch", str(MAX_BATCH),
                         "--max-active-jobs", "2", "--max-queue", "1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Console:
    """Everything the page reported as an error: console.error, uncaught exceptions, failed loads."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)

    def unexpected(self, *allowed: str) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]


@pytest.fixture
def page(browser, server) -> Iterator[tuple[Page, Console]]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    console = Console(pg)
    pg.goto(server.url + "/")
    pg.wait_for_selector("body[data-ready=true]")
    yield pg, console
    ctx.close()


# What an element shows, as a data URL: an <img>'s src, or a PNG of a <canvas>'s pixels (the viewers draw
# frames on canvases and mark each drawing with data-step).
SHOWN_JS = "(el) => el.tagName === 'CANVAS' ? el.toDataURL('image/png') : el.src"


def record_srcs(pg: Page, selector: str) -> None:
    """Collect every distinct image the element shows, in order, into window.__srcs[selector]."""
    pg.evaluate("""([sel, shownSrc]) => {
        const shown = eval(shownSrc);
        window.__srcs = window.__srcs || {};
        const seen = window.__srcs[sel] = [];
        const el = document.querySelector(sel);
        new MutationObserver(() => { const s = shown(el); if (seen[seen.length - 1] !== s) seen.push(s); })
            .observe(el, {attributes: true, attributeFilter: ["src", "data-step"]});
    }""", [selector, SHOWN_JS])


def srcs(pg: Page, selector: str) -> list[str]:
    return pg.evaluate("(sel) => window.__srcs[sel]", selector)


def shown(pg: Page, selector: str) -> str:
    """The image the element shows now, as a data URL."""
    return pg.eval_on_selector(selector, SHOWN_JS)


def frame_count(pg: Page, prefix: str) -> int:
    scrub = pg.locator(f"#{prefix}-scrub")
    return 0 if scrub.is_disabled() else int(scrub.get_attribute("max") or 0) + 1


def _grey_if_grey(a: np.ndarray) -> np.ndarray:
    """Opaque RGBA whose channels agree (a canvas's grey image) as one channel, like the server's PNGs."""
    if a.ndim == 3 and a.shape[2] == 4 and (a[..., 3] == 255).all() and (a[..., :1] == a[..., 1:3]).all():
        return a[..., 0]
    return a


def img(pg: Page, selector: str) -> np.ndarray:
    """The pixels an <img> or a <canvas> shows."""
    return _grey_if_grey(decode_png(shown(pg, selector))).astype(np.int16)


def png_array(data: bytes) -> np.ndarray:
    return _grey_if_grey(np.asarray(Image.open(io.BytesIO(data)))).astype(np.int16)


def fill_generate(pg: Page, *, n: int, sampler: str, steps: int | None = None, stride: int = 1,
                  seed: int | None = None) -> None:
    pg.fill("#gen-n", str(n))
    pg.select_option("#gen-sampler", sampler)
    if steps is not None:
        pg.fill("#gen-steps", str(steps))
    pg.fill("#gen-stride", str(stride))
    if seed is not None:
        pg.check("#gen-seed-fixed")
        pg.fill("#gen-seed", str(seed))


# ---------------------------------------------------------------------------------------------- tests
def test_page_loads_with_model_card_plots_and_no_console_errors(page, server):
    pg, console = page
    model = httpx.get(server.url + API + "/model").json()
    assert pg.inner_text("#model-name") == "tiny-browser-test"
    assert pg.inner_text("#model-params") == f"{model['parameters']:,}"
    assert pg.inner_text("#model-device") == model["device"]
    for dt in ("Dataset", "Trained steps", "Device", "Parameters"):
        assert pg.locator("#model dt", has_text=dt).count() == 1
    # three curves per plot: this model, linear, cosine
    assert pg.locator("#plot-alpha path.curve").count() == 3
    assert pg.locator("#plot-snr path.curve").count() == 3
    assert pg.locator("#noise-examples button.example").count() == 10
    # every control has an accessible name
    unnamed = pg.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter(e => e.type !== 'hidden' && !e.labels?.length && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.id || e.outerHTML)""")
    assert unnamed == []
    # the form opens on the server's defaults (GET /model), which a request without those fields gets
    d = model["defaults"]
    assert d["steps"] < model["T"]
    assert pg.input_value("#gen-sampler") == d["sampler"]
    assert pg.input_value("#gen-steps") == str(d["steps"]) and not pg.is_disabled("#gen-steps")
    assert pg.input_value("#gen-spacing") == d["spacing"]
    assert pg.is_disabled("#gen-eta") == (d["sampler"] not in ("ddim", "dpmpp_2m_sde"))
    assert pg.inner_text("#gen-about") == d["samplers"][d["sampler"]]["about"]
    # selecting full DDPM pins steps to T
    pg.select_option("#gen-sampler", "ddpm-full")
    assert pg.input_value("#gen-steps") == str(model["T"]) and pg.is_disabled("#gen-steps")
    assert pg.is_disabled("#gen-eta")
    assert console.errors == []


def test_usable_at_phone_width(browser, server):
    ctx = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    try:
        pg.goto(server.url + "/")
        pg.wait_for_selector("body[data-ready=true]")
        overflow = pg.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone"
        # the two grids still sit side by side, each inside the screen
        xt, x0 = pg.locator("#gen-xt").bounding_box(), pg.locator("#gen-x0").bounding_box()
        assert xt["x"] + xt["width"] <= x0["x"] and x0["x"] + x0["width"] <= 375
        assert pg.locator("#gen-go").bounding_box()["height"] >= 30  # a tappable button
    finally:
        ctx.close()


def test_generate_streams_frames_then_the_seeds_images_and_the_slider_scrubs(page, server, tmp_path):
    pg, console = page
    steps = 12
    record_srcs(pg, "#gen-xt")
    record_srcs(pg, "#gen-x0")
    pg.evaluate("""() => { window.__marks = [];
        new MutationObserver(() => window.__marks.push(document.getElementById('plot-alpha').dataset.markerT))
            .observe(document.getElementById('plot-alpha'), {attributes: true, attributeFilter: ['data-marker-t']});
    }""")
    fill_generate(pg, n=4, sampler="ddim", steps=steps, seed=7)
    pg.click("#gen-go")
    pg.wait_for_selector("#gen-viewer[data-state=done]")

    xt_seen, x0_seen = srcs(pg, "#gen-xt"), srcs(pg, "#gen-x0")
    assert len(set(xt_seen)) >= steps and len(set(x0_seen)) >= steps, (len(set(xt_seen)), len(set(x0_seen)))
    assert frame_count(pg, "gen") == steps
    assert pg.get_attribute("#gen-bar", "value") == str(steps)
    assert "done" in pg.inner_text("#gen-status") and "seed 7" in pg.inner_text("#gen-status")
    # the schedule marker followed t down to 0 and was hidden at the end
    marks = [int(m) for m in pg.evaluate("window.__marks")]
    assert len(marks) >= steps and marks == sorted(marks, reverse=True) and marks[-1] == 0

    # the final image on the page is the seed's images, as /samples makes them
    final = img(pg, "#gen-xt")
    r = httpx.post(server.url + API + "/samples", json=dict(n=4, steps=steps, sampler="ddim", eta=0.0, seed=7),
                   headers={"Accept": "image/png"}, timeout=60)
    assert r.status_code == 200
    assert np.array_equal(final, png_array(r.content))

    # the slider goes back to the first frame and forward again, by keyboard as a person would
    pg.focus("#gen-scrub")
    pg.keyboard.press("Home")
    assert shown(pg, "#gen-xt") == xt_seen[0]
    assert shown(pg, "#gen-x0") == x0_seen[0]
    assert pg.inner_text("#gen-scrub-out").startswith(f"frame 1/{steps}")
    assert pg.get_attribute("#plot-alpha", "data-marker-t") == str(marks[0])
    pg.keyboard.press("ArrowRight")
    assert shown(pg, "#gen-xt") == xt_seen[1]
    pg.keyboard.press("End")
    assert np.array_equal(img(pg, "#gen-xt"), final)
    assert pg.inner_text("#gen-scrub-out").endswith("t = 0 (done)")

    # downloads: the final PNG and a zip of every frame (CRCs checked by zipfile)
    assert pg.get_attribute("#gen-dl-png", "href") == xt_seen[-1]
    with pg.expect_download() as dl:
        pg.click("#gen-dl-zip")
    path = tmp_path / "frames.zip"
    dl.value.save_as(path)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        names = z.namelist()
        assert len(names) == 2 * steps and f"xt_{steps:04d}.png" in names
        assert np.array_equal(png_array(z.read(f"xt_{steps:04d}.png")), final)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-generate.png"
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert console.errors == []


def start_long_job(pg, min_frames: int) -> str:
    """Start a 1000-step DDPM job on the Generate panel; return its id once ``min_frames`` frames arrived."""
    fill_generate(pg, n=1, sampler="ddpm-full", stride=1)
    pg.click("#gen-go")
    pg.wait_for_function(f"() => Number(document.getElementById('gen-scrub').max) >= {min_frames}")
    job_id = pg.get_attribute("#gen-viewer", "data-job-id")
    assert job_id
    return job_id


def test_cancel_stops_the_stream_and_the_server_job(page, server):
    pg, console = page
    job_id = start_long_job(pg, min_frames=2)
    status = pg.inner_text("#gen-status")
    assert re.fullmatch(r"step \d+/1000 · [\d.]+ it/s · ETA .+", status), status
    pg.click("#gen-cancel")
    pg.wait_for_selector("#gen-viewer[data-state=cancelled]")
    state = httpx.get(f"{server.url}{API}/jobs/{job_id}").json()
    assert state["state"] == "cancelled" and state["step"] < state["of"] == 1000
    assert "cancelled at step" in pg.inner_text("#gen-status")
    frames = frame_count(pg, "gen")
    pg.wait_for_timeout(500)
    assert frame_count(pg, "gen") == frames, "frames kept arriving after Cancel"
    assert pg.is_enabled("#gen-go") and pg.is_disabled("#gen-cancel")
    assert console.errors == []


def test_leaving_the_page_cancels_its_job(page, server):
    pg, _ = page
    job_id = start_long_job(pg, min_frames=1)
    pg.goto("about:blank")
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}{API}/jobs/{job_id}").json()["state"] != "cancelled":
        assert time.monotonic() < deadline, "the job kept running after its page was closed"
        time.sleep(0.05)


def test_noise_panel_noises_and_denoises_back(page, server):
    pg, console = page
    sched = httpx.get(server.url + API + "/schedule").json()
    pg.click("#noise-examples button.example >> nth=2")
    pg.wait_for_selector("#noise-xt[data-t='300']")
    x0 = img(pg, "#noise-x0")
    assert x0.std() > 10  # a digit, not a blank
    # its bits/dim by both routes, measured once per image (POST /likelihood)
    pg.wait_for_function("document.getElementById('noise-bpd').textContent.includes('by the bound')",
                         timeout=TIMEOUT_MS)
    assert re.search(r"bits/dim: \d+\.\d{3} by the ODE \(\d+ evaluations\), \d+\.\d{3} by the bound",
                     pg.inner_text("#noise-bpd"))

    def noise_at(t: int) -> np.ndarray:
        before = pg.get_attribute("#noise-xt", "src")
        pg.evaluate("""(t) => { const s = document.getElementById('noise-t');
            s.value = t; s.dispatchEvent(new Event('input', {bubbles: true})); }""", t)
        pg.wait_for_selector(f"#noise-xt[data-t='{t}']")
        assert t == 300 or pg.get_attribute("#noise-xt", "src") != before
        assert f"ᾱ = {sched['alpha_bars'][t]:.4f}" in pg.inner_text("#noise-facts")
        return img(pg, "#noise-xt")

    # q(x_t | x0): at t = 0 the image survives (noise scale √β₀ = 0.01); at t = T-1 nothing of it does
    assert np.abs(noise_at(0) - x0).mean() < 4
    far = noise_at(sched["T"] - 1)
    assert abs(np.corrcoef(far.ravel(), x0.ravel())[0, 1]) < 0.3
    mid = noise_at(150)
    assert 0.3 < np.corrcoef(mid.ravel(), x0.ravel())[0, 1] < 0.999

    # "denoise from here": the reverse process streams back from t = 150
    pg.fill("#noise-n", "2")
    pg.select_option("#noise-sampler", "ddpm")
    pg.fill("#noise-steps", "10")
    record_srcs(pg, "#noise-xt")  # the noised input must stay put while the reverse process plays below it
    record_srcs(pg, "#noise-viewer .xt")
    pg.click("#noise-go")
    pg.wait_for_selector("#noise-viewer[data-state=done]")
    assert frame_count(pg, "noise") == 10
    assert len(set(srcs(pg, "#noise-viewer .xt"))) >= 10
    assert srcs(pg, "#noise-xt") == []  # the noised input stayed as it was
    pg.focus("#noise-scrub")
    pg.keyboard.press("Home")
    assert "t = 150" in pg.inner_text("#noise-scrub-out")  # the first step starts from the noised image's t
    pg.keyboard.press("End")
    assert "t = 0" in pg.inner_text("#noise-scrub-out")
    assert pg.is_visible("#noise-dl-png")

    # your own file: a bright bar on black, 60×40, center-cropped and resized to the model's 28×28
    bar = np.zeros((40, 60), np.uint8)
    bar[:, 25:35] = 255
    buf = io.BytesIO()
    Image.fromarray(bar).save(buf, "PNG")
    before = pg.get_attribute("#noise-x0", "src")
    pg.set_input_files("#noise-file", files=[{"name": "bar.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    pg.wait_for_function("(b) => document.getElementById('noise-x0').src !== b", arg=before)
    mine = img(pg, "#noise-x0")
    assert mine.shape == x0.shape
    inner = mine[2:-2, 2:-2]  # the grid's border
    assert inner[:, 12:16].mean() > 200 and inner[:, :6].mean() < 30  # the bar stayed in the middle
    # not an image: the server's 415 is on the page
    pg.set_input_files("#noise-file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"hello"}])
    pg.wait_for_function("() => document.getElementById('noise-error').textContent.includes('not a recognised')")
    assert console.unexpected("status of 415") == []


def test_noise_panel_inverts_an_image_and_decodes_its_x_T(page, server):
    """Invert → PSNR and the round trip shown; Denoise from here then starts from that x_T with DDIM on the same
    grid, and gives back the round trip's image."""
    pg, console = page
    pg.click("#noise-examples button.example >> nth=1")
    pg.wait_for_selector("#noise-xt[src]")
    pg.fill("#noise-steps", "8")
    pg.click("#noise-invert")
    pg.wait_for_function("document.getElementById('noise-inv-facts').textContent.includes('PSNR')",
                         timeout=TIMEOUT_MS)
    assert re.search(r"PSNR -?\d+\.\d dB over 8 steps each way", pg.inner_text("#noise-inv-facts"))
    assert pg.input_value("#noise-sampler") == "ddim" and pg.input_value("#noise-steps") == "8"
    rec = img(pg, "#noise-rec")
    pg.fill("#noise-n", "1")
    pg.click("#noise-go")
    pg.wait_for_selector("#noise-viewer[data-state=done]", timeout=TIMEOUT_MS)
    job = httpx.get(f"{server.url}{API}/jobs/{pg.get_attribute('#noise-viewer', 'data-job-id')}").json()
    assert job["sampler"] == "ddim" and job["of"] == 8
    decoded = img(pg, "#noise-viewer .xt")
    assert decoded.shape == rec.shape and np.abs(decoded.astype(int) - rec.astype(int)).max() <= 1

    # the walk through noise space now starts at the inverted image, on the inversion's grid: its first image
    # is the round trip's
    assert pg.is_checked("#interp-from-inv") and pg.is_disabled("#interp-seed-a")
    assert pg.input_value("#interp-steps") == "8"
    pg.fill("#interp-k", "3")
    with pg.expect_request(lambda r: r.url.endswith("/api/v1/interpolate") and r.method == "POST") as req:
        pg.click("#interp-go")
    sent = req.value.post_data_json
    assert sent["seeds"] == [None, "2"] and sent["inits"][1] is None and len(sent["inits"][0]) == 16
    pg.wait_for_selector("#interp-viewer[data-state=done]", timeout=TIMEOUT_MS)
    strip = img(pg, "#interp-viewer .xt")
    cell = rec.shape[0] - 2  # an image and its border
    first = strip[: cell + 2, : cell + 2]
    assert np.abs(first.astype(int) - rec.astype(int)).max() <= 1
    pg.uncheck("#interp-from-inv")
    assert not pg.is_disabled("#interp-seed-a")
    assert console.errors == []


def test_api_errors_are_shown_on_the_page(page, server):
    pg, console = page
    fill_generate(pg, n=MAX_BATCH + 1, sampler="ddim", steps=5)
    pg.click("#gen-go")
    err = pg.locator("#gen-error")
    err.wait_for(state="visible")
    assert "n:" in err.inner_text() and str(MAX_BATCH) in err.inner_text()
    assert pg.get_attribute("#gen-error", "role") == "alert"
    assert pg.is_enabled("#gen-go")  # the page recovered and can try again

    fill_generate(pg, n=2, sampler="ddim", steps=5000)
    pg.click("#gen-go")
    pg.wait_for_function("() => document.getElementById('gen-error').textContent.includes('steps')")
    assert "1000" in err.inner_text()

    fill_generate(pg, n=2, sampler="ddim", steps=3, seed=-5)  # not a valid seed
    pg.click("#gen-go")
    pg.wait_for_function("() => document.getElementById('gen-error').textContent.includes('seed')")

    fill_generate(pg, n=2, sampler="ddim", steps=3, seed=3)
    pg.click("#gen-go")
    pg.wait_for_selector("#gen-viewer[data-state=done]")
    assert err.is_hidden()  # a good run clears the old error
    # the only console noise is Chromium's own note of the refused requests
    assert console.unexpected("status of 422") == []


def _wait_state(url: str, job_id: str, want: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}{API}/jobs/{job_id}").json()["state"] != want:
        assert time.monotonic() < deadline, f"job {job_id} never reached {want}"
        time.sleep(0.05)


def test_queue_position_and_429_are_shown_on_the_page(page, server):
    """The module's server steps 2 jobs and queues 1 more: fill it with long jobs, then ask from the page."""
    pg, console = page
    long_job = dict(n=MAX_BATCH, steps=1000, sampler="ddpm", seed=1, frame_every=1000)  # tens of seconds each
    running = [httpx.post(server.url + API + "/jobs", json=long_job).json()["id"] for _ in range(2)]
    try:
        for job_id in running:
            _wait_state(server.url, job_id, "running")
        waiting = httpx.post(server.url + API + "/jobs", json=long_job).json()["id"]
        fill_generate(pg, n=1, sampler="ddim", steps=5)
        pg.click("#gen-go")
        pg.wait_for_function("() => document.getElementById('gen-error').textContent.includes('busy')")
        assert "retry after" in pg.inner_text("#gen-error")
        assert pg.is_enabled("#gen-go")

        httpx.delete(f"{server.url}{API}/jobs/{waiting}")
        pg.click("#gen-go")
        pg.wait_for_selector("#gen-viewer[data-state=queued]")
        assert pg.inner_text("#gen-status") == "queued: position 1"
        assert pg.is_hidden("#gen-error")
    finally:
        for job_id in running:
            httpx.delete(f"{server.url}{API}/jobs/{job_id}")
    pg.wait_for_selector("#gen-viewer[data-state=done]")  # the slot freed up and our job ran
    assert console.unexpected("status of 429") == []


def test_screenshot_script_drives_the_page_to_a_png(browser, server, tmp_path):
    """scripts/screenshot.py makes the README's and the docs' pictures; run its driver small here so it cannot rot."""
    spec = importlib.util.spec_from_file_location("screenshot", ROOT / "scripts" / "screenshot.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        out = tmp_path / "shot.png"
        shot = script.drive_and_shoot(pg, server.url, out, n=4, steps=8, noise_t=50, race_out=tmp_path / "race.png",
                                      panels_dir=tmp_path / "panels", toy_seconds=1)
        assert shot.errors == [] and shot.grid_seconds > 0
        # this model is unconditional: no guidance grid
        assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == ["invert.png", "playground-field.png",
                                                                           "playground-flows.png", "walk.png"]
        assert Image.open(tmp_path / "race.png").size[0] > 200
        assert pg.get_attribute("#gen-viewer", "data-state") == "done"
        assert pg.get_attribute("#noise-viewer", "data-state") == "done"
        assert pg.input_value("#gen-scrub") == "5"  # round(0.7 × 7): 70% of the way through frames 0..7
    finally:
        ctx.close()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(out, ARTIFACTS / "browser-screenshot-script.png")


def test_sampler_race_runs_both_lanes_on_one_seed(page, server):
    page, console = page
    page.select_option("#race-a-sampler", "ddpm")
    page.fill("#race-a-steps", "12")
    page.select_option("#race-b-sampler", "dpmpp_2m")
    page.fill("#race-b-steps", "4")
    page.fill("#race-n", "2")
    page.click("#race-go")
    for side, nfe in (("a", 12), ("b", 4)):
        page.wait_for_selector(f"#race-{side}-viewer[data-state=done]", timeout=TIMEOUT_MS)
        assert page.inner_text(f"#race-{side}-stats").startswith(f"NFE {nfe} · ")
    ids = [page.get_attribute(f"#race-{s}-viewer", "data-job-id") for s in ("a", "b")]
    seeds = {httpx.get(f"{server.url}{API}/jobs/{i}").json()["seed"] for i in ids}
    assert len(seeds) == 1, "both lanes must start from the same x_T"
    assert page.is_enabled("#race-go") and page.is_disabled("#race-cancel")
    assert console.errors == []


def test_sampler_menu_offers_every_sampler_with_its_defaults(page, server):
    page, _ = page
    d = httpx.get(server.url + API + "/model").json()["defaults"]["samplers"]
    assert {"plms", "pndm", "sde_em", "pc", "ode_rk45"} <= set(d)
    for name, facts in d.items():
        page.select_option("#gen-sampler", name)
        adaptive = facts["steps"] is None
        assert page.is_disabled("#gen-steps") == adaptive and page.is_disabled("#gen-spacing") == adaptive
        if not adaptive:
            assert page.input_value("#gen-steps") == str(facts["steps"])
            assert page.input_value("#gen-spacing") == facts["spacing"]
        assert page.inner_text("#gen-about") == facts["about"]
        for field in ("eta", "snr", "corrector_steps", "rtol", "atol"):  # each sampler's own fields only
            assert page.is_disabled(f"#gen-{field}") == (facts[field] is None), (name, field)
            if facts[field] is not None:
                assert float(page.input_value(f"#gen-{field}")) == facts[field]


def test_the_adaptive_ode_streams_with_a_bar_that_follows_t(page, server):
    """ode_rk45 from the page: no steps sent, its own tolerance; frames carry t and the bar ends full at the
    evaluations the done event reports."""
    page, console = page
    page.select_option("#gen-sampler", "ode_rk45")
    page.fill("#gen-rtol", "0.05")
    page.fill("#gen-atol", "0.05")
    page.fill("#gen-n", "2")
    page.fill("#gen-stride", "1")
    page.click("#gen-go")
    page.wait_for_selector("#gen-viewer[data-state=done]", timeout=TIMEOUT_MS)
    job = httpx.get(f"{server.url}{API}/jobs/{page.get_attribute('#gen-viewer', 'data-job-id')}").json()
    assert job["sampler"] == "ode_rk45" and job["spacing"] is None and job["state"] == "done"
    assert job["step"] == job["of"] > 1
    bar = page.locator("#gen-viewer .bar")
    assert bar.get_attribute("max") == str(job["of"]) and bar.get_attribute("value") == str(job["of"])
    assert console.errors == []


@contextlib.contextmanager
def conditional_page(browser: Browser, tmp_path: Path) -> Iterator[tuple[Page, Console, Server]]:
    """The page of a server of its own for a tiny class-conditional 8×8 model (T = 50, ten classes)."""
    from .server_utils import tiny_model_file

    model = tiny_model_file(tmp_path / "cond.safetensors", image_size=8, T=50, num_classes=10)
    server = start_server(model, tmp_path / "server.log")
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        console = Console(pg)
        pg.goto(server.url + "/")
        pg.wait_for_selector("body[data-ready=true]")
        yield pg, console, server
    finally:
        ctx.close()
        server.stop()


def test_guidance_grid_and_noise_space_walk_panels(browser, tmp_path):
    """The grid panel: one job of digits × scales images, tiled a digit to a column, whose rows share their draws
    (the s = 1 row asked twice is the same row twice), and a bad scale named by the server's 422."""
    with conditional_page(browser, tmp_path) as (pg, console, server):
        pg.fill("#grid-scales", "0, 1, 1")
        pg.fill("#grid-seed", "5")
        with pg.expect_request(lambda r: r.url.endswith("/api/v1/jobs") and r.method == "POST") as req:
            pg.click("#grid-go")
        sent = req.value.post_data_json
        assert (sent["n"], sent["labels"], sent["guidance_grid"]) == (10, "each", [0, 1, 1])
        pg.wait_for_selector("#grid-viewer[data-state=done]")
        assert pg.locator("#grid-cell-labels span").all_inner_texts() == [str(d) for d in range(10)] * 3
        job = httpx.get(f"{server.url}{API}/jobs/{pg.get_attribute('#grid-viewer', 'data-job-id')}").json()
        assert job["n"] == 30
        grid = img(pg, "#grid-viewer .xt")
        cell = 8 + 2
        assert grid.shape[1] == 10 * cell + 2 and grid.shape[0] == 3 * cell + 2  # a digit to a column
        assert np.array_equal(grid[cell + 2 : 2 * cell], grid[2 * cell + 2 : 3 * cell])  # the two s = 1 rows
        pg.fill("#grid-scales", "0, 30")
        pg.click("#grid-go")
        pg.wait_for_function("document.getElementById('grid-error').textContent.includes('guidance_grid')")
        assert console.unexpected("status of 422") == []

        # the walk through noise space: a strip of 5 from seed 1's 3 to seed 2's 8, whose ends are those seeds'
        # own one-image samples
        pg.fill("#interp-k", "5")
        pg.fill("#interp-steps", "4")
        pg.select_option("#interp-label-a", "3")
        pg.select_option("#interp-label-b", "8")
        with pg.expect_request(lambda r: r.url.endswith("/api/v1/interpolate") and r.method == "POST") as req:
            pg.click("#interp-go")
        assert req.value.post_data_json["labels"] == [3, 8] and req.value.post_data_json["seeds"] == ["1", "2"]
        pg.wait_for_selector("#interp-viewer[data-state=done]")
        strip = img(pg, "#interp-viewer .xt")
        assert strip.shape[1] == 5 * cell + 2 and strip.shape[0] == cell + 2  # one row
        for end, (seed, label) in ((0, (1, 3)), (4, (2, 8))):
            one = httpx.post(f"{server.url}{API}/samples", json={"n": 1, "seed": seed, "labels": label,
                                                                  "sampler": "ddim", "steps": 4}).json()
            mine = decode_png(one["images"][0]).astype(int)
            got = strip[2:cell, 2 + end * cell : (end + 1) * cell]
            assert np.abs(got - mine).max() <= 1, end


def test_digit_picker_and_guidance_slider_drive_a_conditional_model(browser, tmp_path):
    with conditional_page(browser, tmp_path) as (pg, console, _server):
        assert pg.inner_text("#model-classes") == ", ".join(str(c) for c in range(10))
        assert pg.input_value("#gen-labels") == "any"
        pg.fill("#gen-guidance", "3.5")
        pg.dispatch_event("#gen-guidance", "input")
        assert pg.inner_text("#gen-guidance-out") == "3.5"
        pg.select_option("#gen-labels", "7")
        pg.fill("#gen-n", "2")
        pg.select_option("#gen-sampler", "dpmpp_2m")
        pg.fill("#gen-steps", "4")
        with pg.expect_request(lambda r: r.url.endswith("/api/v1/jobs") and r.method == "POST") as req:
            pg.click("#gen-go")
        assert (req.value.post_data_json["labels"], req.value.post_data_json["guidance"]) == (7, 3.5)
        # the guidance interval's two ends start at the server's default: the lower 55 % of t
        assert req.value.post_data_json["guidance_interval"] == [0, 27]
        pg.wait_for_selector("#gen-viewer[data-state=done]")
        assert pg.locator("#gen-cell-labels span").all_inner_texts() == ["7", "7"]
        pg.fill("#gen-gi-hi", "30")
        pg.fill("#gen-gi-lo", "10")
        with pg.expect_request(lambda r: r.url.endswith("/api/v1/jobs") and r.method == "POST") as req:
            pg.click("#gen-go")
        assert req.value.post_data_json["guidance_interval"] == [10, 30]
        pg.wait_for_selector("#gen-viewer[data-state=done]")
        pg.select_option("#gen-labels", "each")
        with pg.expect_request(lambda r: r.url.endswith("/api/v1/jobs") and r.method == "POST") as req:
            pg.click("#gen-go")
        assert req.value.post_data_json["labels"] == [0, 1]
        pg.wait_for_selector("#gen-viewer[data-state=done]")
        assert pg.locator("#gen-cell-labels span").all_inner_texts() == ["0", "1"]
        # "any" is drawn by the server from the seed; the page shows what it drew
        pg.select_option("#gen-labels", "any")
        pg.fill("#gen-n", "5")
        pg.click("#gen-go")
        pg.wait_for_selector("#gen-viewer[data-state=done]")
        drawn = pg.locator("#gen-cell-labels span").all_inner_texts()
        assert len(drawn) == 5 and all(c in "0123456789" for c in drawn)
        assert console.errors == []


BLANK_JS = "(c) => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; " \
           "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"


def test_playground_trains_while_you_watch_then_shows_flows_and_the_field(page, server):
    """The playground panel: progress (loss curve, sample cloud) streams while the server trains; then the SDE and
    ODE flows replay and the field's t slider redraws the arrows; your own drawn points are what it trains on."""
    pg, console = page
    pg.fill("#toy-seconds", "2")
    with pg.expect_request(lambda r: r.url.endswith("/api/v1/toy/jobs") and r.method == "POST") as req:
        pg.click("#toy-go")
    sent = req.value.post_data_json
    assert (sent["dataset"], sent["seconds"], sent["sampler"], sent["steps"]) == ("8gaussians", 2, "ddpm", 100)
    pg.wait_for_selector("#toy[data-progress='2']")
    assert pg.locator("#toy-loss polyline.curve").count() == 1
    assert "training: step" in pg.inner_text("#toy-status")
    pg.wait_for_selector("#toy[data-state=done]")
    assert pg.inner_text("#toy-status").startswith("done:") and pg.is_visible("#toy-after")
    drawn_samples = pg.eval_on_selector("#toy-board", BLANK_JS)
    assert drawn_samples > 1000
    pg.select_option("#toy-view", "flows")
    pg.wait_for_selector("#toy[data-flowed=true]")
    assert pg.get_attribute("#toy", "data-view") == "flows" and pg.is_visible("#toy-replay")
    pg.select_option("#toy-view", "field")
    assert pg.is_visible("#toy-t") and not pg.is_visible("#toy-replay")
    before = pg.eval_on_selector("#toy-board", "(c) => c.toDataURL()")
    pg.eval_on_selector("#toy-t", "(el) => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    assert pg.inner_text("#toy-t-out").startswith("t = 0 ")
    assert pg.eval_on_selector("#toy-board", "(c) => c.toDataURL()") != before
    job = pg.get_attribute("#toy", "data-job-id")
    assert httpx.get(f"{server.url}{API}/jobs/{job}").json()["state"] == "done"

    # draw your own: a stroke of points, sent as the job's points, and Cancel stops the server's training
    pg.select_option("#toy-dataset", "draw")
    assert pg.is_visible("#toy-clear")
    pg.locator("#toy-board").scroll_into_view_if_needed()
    box = pg.locator("#toy-board").bounding_box()
    pg.mouse.move(box["x"] + 60, box["y"] + 60)
    pg.mouse.down()
    for i in range(30):
        pg.mouse.move(box["x"] + 60 + 6 * i, box["y"] + 60 + 3 * i)
    pg.mouse.up()
    pg.fill("#toy-seconds", "30")
    pg.select_option("#toy-sampler", "ode_rk45")
    assert pg.is_disabled("#toy-steps")
    with pg.expect_request(lambda r: r.url.endswith("/api/v1/toy/jobs") and r.method == "POST") as req:
        pg.click("#toy-go")
    assert req.value.post_data_json["sampler"] == "ode_rk45" and "steps" not in req.value.post_data_json
    points = req.value.post_data_json["points"]
    assert len(points) >= 20 and "dataset" not in req.value.post_data_json
    assert all(-3 <= x <= 3 and -3 <= y <= 3 for x, y in points) and points[0][0] < points[-1][0]
    assert points[0][1] > points[-1][1]  # the stroke goes down the screen: y falls on the board
    pg.wait_for_selector("#toy[data-state=running]")
    pg.wait_for_function("document.getElementById('toy-status').textContent.startsWith('training')")
    pg.click("#toy-cancel")
    pg.wait_for_selector("#toy[data-state=cancelled]")
    job = pg.get_attribute("#toy", "data-job-id")
    assert httpx.get(f"{server.url}{API}/jobs/{job}").json()["state"] == "cancelled"
    assert console.errors == []
