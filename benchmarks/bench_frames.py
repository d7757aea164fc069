"""What streaming every frame costs: the page's job with a frame each step (PNG, raw) vs with the final frame only.

    .venv/bin/python benchmarks/bench_frames.py [--repeats 3] [--n 16] [--steps 100] [--cpu-only]

One real ``ddpm serve`` of the unconditional model (the bundled default when §4 was measured) on
127.0.0.1, at torch's default threads (as `make demo`).
Each round runs the same job (by default the page's: 16 images, respaced DDPM 100, seed 0) three ways,
read over ``/stream`` by a client that parses every event: ``frame_every=1`` with ``frame_format=png``,
the same with ``frame_format=raw``, and with only the final frame. The order rotates between rounds.
The rounds run twice: with the host otherwise idle, then while a separate process this script starts
keeps one core busy (and stops afterwards). Reports the medians and each frame format's ratio to the
no-frames job against the targets (≤ 1.03× idle, ≤ 1.10× loaded).

A second table times, in this process, the server's own work for one frame of that job in each format
(the grids, the encoding, the SSE event's bytes) in CPU time of the thread that does it, which other
load on the host does not inflate the way it inflates wall time.
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


from app.local_server import start_server, stream_seconds  # noqa: E402
from engine import UNCONDITIONAL_MODEL  # noqa: E402

SAMPLER, SEED = "ddpm", 0
VARIANTS = {"png, every step": {"frame_every": 1, "frame_format": "png"},
            "raw, every step": {"frame_every": 1, "frame_format": "raw"},
            "final frame only": {"frame_every": 100_000}}
TARGETS = {"idle": 1.03, "one core busy": 1.10}


def job_seconds(url: str, **params: object) -> float:
    """Seconds from the request to the ``done`` event, every event parsed on the way."""
    q = {"sampler": SAMPLER, "seed": SEED, **params}
    return stream_seconds(url, q, timeout=600)


def rounds(url: str, repeats: int, **job: int) -> dict[str, list[float]]:
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            times[name].append(job_seconds(url, **job, **VARIANTS[name]))
            print(f"round {i + 1}, {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return times


def frame_cpu_ms(n: int, fmt: str, repeats: int = 200) -> float:
    """Median thread CPU ms to turn one step's x_t and x̂0 (``n`` images) into an SSE event's bytes."""
    import numpy as np
    import torch

    from app.http import sse
    from app.runtime.frames import FrameEncoder, JobLog, encode
    from app.runtime.results import Frame
    from app.runtime.worker import Job
    from engine import SamplingSpec, load_model_file, resolve

    m = load_model_file(UNCONDITIONAL_MODEL)
    encoder = FrameEncoder()
    run = resolve(SamplingSpec(n=n, sampler=SAMPLER, steps=100, seed=SEED), m)  # type: ignore[arg-type]
    job = Job(id="bench", run=run, frame_every=1, log=JobLog(fmt, 8, encoder, m.card.value_range))  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    x_t, x0 = torch.randn(n, *m.sample_shape, generator=gen), torch.rand(n, *m.sample_shape, generator=gen) * 2 - 1
    vr = m.card.value_range
    times = []
    for step in range(1, repeats + 1):
        t0 = time.thread_time()
        frame = encode(Frame(step, repeats, 0, x_t, x0), fmt, vr)  # type: ignore[arg-type]
        sse.to_sse(frame, job).encode()
        times.append((time.thread_time() - t0) * 1000)
    encoder.close()
    return float(np.median(times))


def busy_core() -> subprocess.Popen:
    """A separate process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=16, help="images per job")
    ap.add_argument("--steps", type=int, default=100, help="respaced DDPM steps")
    ap.add_argument("--cpu-only", action="store_true", help="only the per-frame CPU table (no server)")
    args = ap.parse_args()
    job = {"n": args.n, "steps": args.steps}
    if not args.cpu_only:
        server_table(args.repeats, job)
    print(f"\n| frame format | server CPU per frame ({args.n} images), ms |")
    print("|---|---|")
    for fmt in ("png", "raw"):
        print(f"| {fmt} | {frame_cpu_ms(args.n, fmt):.3f} |")


def server_table(repeats: int, job: dict[str, int]) -> None:
    server = start_server(UNCONDITIONAL_MODEL, Path("/tmp/bench_frames.log"), timeout=120, threads=None)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for name in VARIANTS:  # first-request costs are not what we measure
            job_seconds(server.url, **job, **VARIANTS[name])
        results["idle"] = rounds(server.url, repeats, **job)
        load = busy_core()
        try:
            time.sleep(1.0)
            results["one core busy"] = rounds(server.url, repeats, **job)
        finally:
            load.kill()
            load.wait()
    finally:
        server.stop()

    host = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")),
        platform.processor())
    print(f"\nunconditional model, {SAMPLER} {job['steps']} steps, {job['n']} images, seed {SEED}; {host}, "
          f"{os.cpu_count()} cores; "
          f"median of {repeats} rounds\n")
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
