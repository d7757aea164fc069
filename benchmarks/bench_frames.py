"""What streaming every frame costs: the page's job with a frame each step (PNG, raw) vs with the final frame only.

    .venv/bin/python benchmarks/bench_frames.py [--repeats 3] [--n 16] [--steps 100]

One real ``ddpm serve`` of the bundled model on 127.0.0.1, at torch's default threads (as `make demo`).
Each round runs the same job (by default the page's: 16 images, respaced DDPM 100, seed 0) three ways,
read over ``/stream`` by a client that parses every event: ``frame_every=1`` with ``frame_format=png``,
the same with ``frame_format=raw``, and with only the final frame. The order rotates between rounds.
The rounds run twice: with the host otherwise idle, then while a separate process this script starts
keeps one core busy (and stops afterwards). Reports the medians and each frame format's ratio to the
no-frames job against the targets (≤ 1.03× idle, ≤ 1.10× loaded).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from engine import DEFAULT_MODEL  # noqa: E402
from tests.server_utils import sse_events, start_server  # noqa: E402

SAMPLER, SEED = "ddpm", 0
VARIANTS = {"png, every step": {"frame_every": 1, "frame_format": "png"},
            "raw, every step": {"frame_every": 1, "frame_format": "raw"},
            "final frame only": {"frame_every": 100_000}}
TARGETS = {"idle": 1.03, "one core busy": 1.10}


def job_seconds(url: str, **params: object) -> float:
    """Seconds from the request to the ``done`` event, every event parsed on the way."""
    q = {"sampler": SAMPLER, "seed": SEED, **params}
    t0 = time.perf_counter()
    with httpx.stream("GET", url + "/api/v1/stream", params=q, timeout=600) as r:
        for ev in sse_events(r):
            if ev.event == "done":
                return time.perf_counter() - t0
            if ev.event in ("error", "cancelled"):
                raise RuntimeError(f"job ended with {ev.event}: {ev.data}")
    raise RuntimeError("stream closed without done")


def rounds(url: str, repeats: int, **job: int) -> dict[str, list[float]]:
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            times[name].append(job_seconds(url, **job, **VARIANTS[name]))
    return times


def busy_core() -> subprocess.Popen:
    """A separate process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=16, help="images per job")
    ap.add_argument("--steps", type=int, default=100, help="respaced DDPM steps")
    args = ap.parse_args()
    job = {"n": args.n, "steps": args.steps}
    server = start_server(DEFAULT_MODEL, Path("/tmp/bench_frames.log"), timeout=120, threads=None)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for name in VARIANTS:  # first-request costs are not what we measure
            job_seconds(server.url, **job, **VARIANTS[name])
        results["idle"] = rounds(server.url, args.repeats, **job)
        load = busy_core()
        try:
            time.sleep(1.0)
            results["one core busy"] = rounds(server.url, args.repeats, **job)
        finally:
            load.kill()
            load.wait()
    finally:
        server.stop()

    host = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")),
        platform.processor())
    print(f"\nbundled model, {SAMPLER} {args.steps} steps, {args.n} images, seed {SEED}; {host}, "
          f"{os.cpu_count()} cores; "
          f"median of {args.repeats} rounds\n")
    print("| host | frames | seconds | runs | vs final frame only | target |")
    print("|---|---|---|---|---|---|")
    for cond, times in results.items():
        base = statistics.median(times["final frame only"])
        for name, ts in times.items():
            med = statistics.median(ts)
            target = "" if name == "final frame only" else f"≤ {TARGETS[cond]:.2f}×"
            runs = " ".join(f"{t:.2f}" for t in ts)
            print(f"| {cond} | {name} | {med:.2f} | {runs} | {med / base:.3f}× | {target} |")


if __name__ == "__main__":
    main()
