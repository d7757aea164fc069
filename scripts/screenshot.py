"""Take the README's screenshot: serve a model, drive the page in headless Chromium, save a PNG.

    python scripts/screenshot.py                       # the bundled model → docs/screenshot.png
    python scripts/screenshot.py --model m.safetensors --out /tmp/shot.png --sampler ddim --steps 20
    python scripts/screenshot.py --labels 7 --guidance 3     # a class-conditional model: one digit, guided
    python scripts/screenshot.py --url http://127.0.0.1:8000      # a server that is already running

It generates a grid, noises a dataset sample (when the model has bundled samples) and denoises it back,
scrubs the timeline to a frame 70% of the way through, and photographs the whole page.
Prints one JSON line: where the picture went, the run's final state, the seconds from Generate to a
finished grid, and any console errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.local_server import start_server  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _set_range(page: Page, selector: str, value: int) -> None:
    page.evaluate("""([sel, v]) => { const s = document.querySelector(sel);
        s.value = v; s.dispatchEvent(new Event('input', {bubbles: true})); }""", [selector, value])


class Shot(NamedTuple):
    errors: list[str]  # console errors seen
    grid_seconds: float  # from the click on Generate to the grid's done state, as a user waits


def drive_and_shoot(page: Page, url: str, out: Path, n: int = 16, steps: int | None = None, seed: int = 0,
                    noise_t: int = 400, sampler: str | None = None, race_out: Path | None = None,
                    labels: str = "each", guidance: float | None = None, panels_dir: Path | None = None,
                    toy_seconds: float = 20.0) -> Shot:
    """Run the demo on ``page`` and save a full-page PNG at ``out`` (and the sampler race at ``race_out``; and
    the explorables, inversion, the guidance grid, the walk through noise space and the playground trained for
    ``toy_seconds``, into ``panels_dir``).

    ``sampler``, ``steps`` and ``guidance`` left None keep the page's defaults (the server's); ``labels``
    is the digit picker's choice, used when the model is class-conditional."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")

    page.fill("#gen-n", str(n))
    if sampler is not None:
        page.select_option("#gen-sampler", sampler)
    if steps is not None:
        page.fill("#gen-steps", str(steps))
    if page.locator("#gen-labels").count():
        page.select_option("#gen-labels", labels)
        if guidance is not None:
            _set_range(page, "#gen-guidance", guidance)
    page.check("#gen-seed-fixed")
    page.fill("#gen-seed", str(seed))
    t0 = time.perf_counter()
    page.click("#gen-go")
    page.wait_for_selector("#gen-viewer[data-state=done]")
    grid_seconds = time.perf_counter() - t0

    if page.locator("#noise-examples button.example").count():
        page.click("#noise-examples button.example >> nth=3")
        page.wait_for_selector("#noise-xt[src]")
        _set_range(page, "#noise-t", noise_t)
        page.wait_for_selector(f"#noise-xt[data-t='{noise_t}']")
        page.fill("#noise-steps", str(min(int(page.input_value("#gen-steps")), noise_t + 1)))
        page.click("#noise-go")
        page.wait_for_selector("#noise-viewer[data-state=done]")
        # the image's likelihood runs beside the jobs: let it finish, so that the race's times are its own
        page.wait_for_function("document.getElementById('noise-bpd').textContent.includes('by the bound')")
    if race_out is not None:  # its default lanes: respaced DDPM against DPM-Solver++(2M)
        page.fill("#race-n", str(n))
        page.click("#race-go")
        for side in ("a", "b"):
            page.wait_for_selector(f"#race-{side}-viewer[data-state=done]")
        race_out.parent.mkdir(parents=True, exist_ok=True)
        page.locator("#race").screenshot(path=str(race_out))
    if panels_dir is not None:
        shoot_explorables(page, panels_dir, steps, toy_seconds)
    # x_t still noisy, x̂0 already legible, and the schedule marker showing where that frame sits
    _set_range(page, "#gen-scrub", round(0.7 * int(page.get_attribute("#gen-scrub", "max") or 0)))
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    return Shot(errors, grid_seconds)


def shoot_explorables(page: Page, out_dir: Path, steps: int | None, toy_seconds: float) -> list[Path]:
    """The noise panel after an inversion, the guidance grid (class-conditional models), a walk through noise
    space, and the playground's flows and field, each photographed once its job is done; the PNGs written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    if page.locator("#noise-xt[src]").count():  # the dataset's fourth example: a 3
        if page.locator("#noise-invert-label").count():
            page.select_option("#noise-invert-label", "3")
        page.fill("#noise-steps", str(steps or 50))
        page.click("#noise-invert")
        page.wait_for_function("document.getElementById('noise-inv-facts').textContent.includes('PSNR')")
        page.click("#noise-go")
        page.wait_for_selector("#noise-viewer[data-state=done]")
        shots.append(("noise", out_dir / "invert.png"))
    if page.locator("#grid-go").count():
        page.click("#grid-go")
        page.wait_for_selector("#grid-viewer[data-state=done]")
        shots.append(("grid", out_dir / "guidance-grid.png"))
    if page.is_checked("#interp-from-inv"):  # the inversion above offers itself as an end: walk seed to seed
        page.uncheck("#interp-from-inv")
    if steps is not None:
        page.fill("#interp-steps", str(steps))
    page.click("#interp-go")
    page.wait_for_selector("#interp-viewer[data-state=done]")
    shots.append(("interp", out_dir / "walk.png"))
    for section, path in shots:
        page.locator(f"#{section}").screenshot(path=str(path))
    page.fill("#toy-seconds", str(toy_seconds))
    page.click("#toy-go")
    page.wait_for_selector("#toy[data-state=done]")
    page.select_option("#toy-view", "flows")
    page.wait_for_selector("#toy[data-flowed=true]")  # the replay's last frame: every trail drawn in full
    page.locator("#toy").screenshot(path=str(out_dir / "playground-flows.png"))
    page.select_option("#toy-view", "field")
    page.locator("#toy").screenshot(path=str(out_dir / "playground-field.png"))
    shots += [("toy", out_dir / "playground-flows.png"), ("toy", out_dir / "playground-field.png")]
    return [path for _, path in shots]


def main() -> int:
    from engine import DEFAULT_MODEL, SAMPLERS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model file (default: the bundled model)")
    ap.add_argument("--url", help="use this running server instead of starting one for --model")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    ap.add_argument("--n", type=int, default=16, help="images to generate")
    ap.add_argument("--race-out", type=Path, default=ROOT / "docs" / "race.png", help="the sampler race panel")
    ap.add_argument("--panels-dir", type=Path, default=ROOT / "docs" / "panels",
                    help="the explorables' panels: invert.png, guidance-grid.png, walk.png, playground-*.png")
    ap.add_argument("--toy-seconds", type=float, default=20.0, help="the playground's training seconds")
    ap.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                    help="sampler for the grid (default: the page's, which is the server's)")
    ap.add_argument("--steps", type=int, default=None, help="steps for the grid (default: the page's); the "
                                                             "denoise uses as many")
    ap.add_argument("--labels", default="each", help="a class-conditional model's digit picker: any, 0-9, each "
                                                     "or none")
    ap.add_argument("--guidance", type=float, default=None, help="its guidance slider (default: the page's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-t", type=int, default=400, help="t for the noise-your-own-image panel")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    if not args.url and not args.model.exists():
        ap.error(f"--model: {args.model} does not exist (train and export a model, or pass one)")

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        # threads=None: torch's default thread count, as `make demo` serves
        server = None if args.url else start_server(args.model, Path(tmp) / "server.log", threads=None)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": args.width, "height": 900})
                page.set_default_timeout(120_000)
                shot = drive_and_shoot(page, args.url or server.url, args.out, args.n, args.steps, args.seed,
                                       args.noise_t, args.sampler, args.race_out, args.labels, args.guidance,
                                       args.panels_dir, args.toy_seconds)
                state = page.get_attribute("#gen-viewer", "data-state")
                browser.close()
        finally:
            if server is not None:
                server.stop()
    print(json.dumps({"out": str(args.out), "state": state, "grid_seconds": round(shot.grid_seconds, 2),
                      "console_errors": shot.errors}))
    return 0 if not shot.errors and state == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
