"""A few-step job and the server's default job against respaced DDPM 100, through one real server.

    .venv/bin/python benchmarks/bench_default_job.py [--repeats 3] [--fast dpmpp_2m:20] [--model FILE]
        [--job NAME='{"guidance_interval": [0, 550]}' ...]

Every job as the page sends it (16 images, seed 0, a frame every step as raw pixels) over ``/stream``
from one ``ddpm serve`` of the bundled model at torch's default threads (as ``make demo``). The default
job names no sampler, steps or spacing, so it gets the server's defaults; each ``--job`` is the default job
with the fields its JSON gives. Runs alternate; medians are reported with every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from app.local_server import start_server, stream_seconds  # noqa: E402
from engine import DEFAULT_MODEL  # noqa: E402

BASE = {"n": 16, "seed": 0, "frame_every": 1, "frame_format": "raw"}


def job_seconds(url: str, params: dict) -> float:
    return stream_seconds(url, params, timeout=900)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--fast", default="dpmpp_2m:20", help="a few-step job as sampler:steps")
    ap.add_argument("--job", action="append", default=[], metavar="NAME=JSON",
                    help="another job: the default job with these request fields")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(args.model, Path(tmp) / "server.log", threads=None)
        try:
            defaults = httpx.get(server.url + "/api/v1/model").json()["defaults"]
            sampler, steps = args.fast.split(":")
            jobs = {"ddpm 100": {**BASE, "sampler": "ddpm", "steps": 100, "spacing": "linspace"},
                    f"{sampler} {steps}": {**BASE, "sampler": sampler, "steps": int(steps), "spacing": "linspace"},
                    "default": dict(BASE)}
            for spec in args.job:
                name, _, fields = spec.partition("=")
                jobs[name] = {**BASE, **json.loads(fields)}
            if defaults.get("labels") is not None:  # a conditional model: the baseline is unguided
                jobs["ddpm 100"].update(labels="none")
            times: dict[str, list[float]] = {k: [] for k in jobs}
            job_seconds(server.url, {**BASE, "n": 1, "steps": 2, "sampler": "ddpm"})  # warm the server up
            for _ in range(args.repeats):
                for name, params in jobs.items():
                    times[name].append(job_seconds(server.url, params))
        finally:
            server.stop()
    d = {k: defaults.get(k) for k in ("sampler", "steps", "spacing", "eta", "labels", "guidance", "guidance_interval")}
    print(f"\nserver defaults: {d}; 16 images, raw frames every step, median of {args.repeats}\n")
    print("| job | seconds (median) | runs | vs DDPM 100 |")
    print("|---|---|---|---|")
    base = statistics.median(times["ddpm 100"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {' '.join(f'{t:.2f}' for t in ts)} | {med / base:.3f}× |")


if __name__ == "__main__":
    main()
