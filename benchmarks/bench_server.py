"""Streaming server costs: frames, batching across clients, latency, and worker overhead vs a bare forward.

    .venv/bin/python benchmarks/bench_server.py [--steps 10] [--repeats 3]

Uses the "mnist" preset (random weights, 28×28) saved to a temp model file and served by a real
uvicorn subprocess on 127.0.0.1 (``ddpm serve``); clients read SSE with httpx. The worker-vs-bare
comparison runs in-process; everything uses one torch thread. Paired runs are interleaved and the
median is reported, so machine noise hits both sides alike. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# OpenMP reads this once, for every thread: the worker thread and the bare loop must both get it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx  # noqa: E402
import torch  # noqa: E402

from app.local_server import sse_events, start_server  # noqa: E402
from engine import ModelCard, build_model, load_model_file, preset_config, save_model_file  # noqa: E402


def mnist_model_file(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = preset_config("mnist")
    return save_model_file(path, build_model(cfg), ModelCard(model=cfg, data={"dataset": "bench"}, name="bench"))


def stream_job(url: str, n: int, steps: int, frame_every: int, seed: int = 0) -> tuple[float, float, int]:
    """One /stream client: (seconds to first frame, seconds to done, frames seen)."""
    params = {"n": n, "steps": steps, "sampler": "ddim", "eta": 0, "seed": seed, "frame_every": frame_every}
    t0 = time.perf_counter()
    first, frames = None, 0
    with httpx.Client(timeout=600) as c, c.stream("GET", url + "/api/v1/stream", params=params) as r:
        r.raise_for_status()
        for ev in sse_events(r):
            if ev.event == "frame":
                frames += 1
                first = first if first is not None else time.perf_counter() - t0
            elif ev.event == "done":
                return first or 0.0, time.perf_counter() - t0, frames
            elif ev.event in ("error", "cancelled"):
                raise RuntimeError(f"job ended with {ev.event}: {ev.data}")
    raise RuntimeError("stream closed without done")


def concurrent(url: str, count: int, n: int, steps: int, frame_every: int) -> tuple[float, list[tuple[float, float]]]:
    """``count`` clients started together: (wall seconds until all done, per-client (ttff, total) in start order)."""
    results: list[tuple[float, float] | None] = [None] * count
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            ttff, total, _ = stream_job(url, n, steps, frame_every, seed=i)
            results[i] = (ttff, total)
        except BaseException as e:  # surfaced after join
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    t0 = time.perf_counter()
    for i, th in enumerate(threads):
        th.start()
        if i < count - 1:
            time.sleep(0.005)  # keep start order, so the last client really is the 8th
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, [r for r in results if r is not None]


def paired(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` run alternately."""
    xs, ys = [], []
    for _ in range(repeats):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def worker_vs_bare(model_path: Path, batch: int, steps: int, repeats: int) -> tuple[float, float]:
    """Mean seconds per worker tick vs per bare UNet forward, same batch, same process, same threads."""
    from app.runtime.frames import JobLog
    from app.runtime.worker import SamplingWorker
    from engine import SamplingSpec, resolve

    m = load_model_file(model_path, torch.device("cpu"))
    w = SamplingWorker(m, torch.device("cpu"), max_batch=batch, max_active_jobs=4, max_queue=4)
    w.start()
    spec = SamplingSpec(n=batch, sampler="ddim", steps=steps, eta=0.0, seed=1)
    plan = resolve(spec, m).plan
    x = torch.randn(batch, *m.sample_shape)

    def worker_run() -> float:
        reg = w.metrics.registry
        s0 = reg.get_sample_value("ddpm_step_seconds_sum") or 0.0
        c0 = reg.get_sample_value("ddpm_step_seconds_count") or 0.0
        job = w.submit(resolve(spec, m), steps, JobLog("png", 8, w.encoder, m.card.value_range))
        while not job.done:
            time.sleep(0.05)  # the tick time comes from the histogram; a busy poll would take the GIL from the worker
        s1 = reg.get_sample_value("ddpm_step_seconds_sum")
        c1 = reg.get_sample_value("ddpm_step_seconds_count")
        return (s1 - s0) / (c1 - c0)

    def bare_run() -> float:
        out: list[float] = []

        @torch.inference_mode()
        def loop() -> None:  # on its own thread, like the worker, so both get the same thread pool
            t0 = time.perf_counter()
            for k in range(steps):
                t = torch.full((batch,), int(plan.timesteps[k]), dtype=torch.long)
                m.net(x, t)
            out.append((time.perf_counter() - t0) / steps)

        th = threading.Thread(target=loop)
        th.start()
        th.join()
        return out[0]

    try:
        return paired(worker_run, bare_run, repeats)
    finally:
        w.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps per job")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the server (app.local_server) runs with one thread too
    S, R = args.steps, args.repeats
    rows: list[tuple[str, str, str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        model = mnist_model_file(Path(tmp) / "mnist.safetensors")
        server = start_server(model, Path(tmp) / "server.log", "--max-batch", "64", "--device", "cpu")
        url = server.url
        try:
            stream_job(url, 4, S, 1)  # warm-up: first-request costs are not what we measure

            every, final_only = paired(lambda: stream_job(url, 4, S, 1)[1], lambda: stream_job(url, 4, S, S)[1], R)
            rows.append((f"4 images, {S} steps: frame every step vs final frame only", f"{every:.3f} s",
                         f"{final_only:.3f} s", f"{every / final_only:.3f}×", "≤ 1.05×"))

            conc, single = paired(lambda: concurrent(url, 8, 4, S, S)[0], lambda: stream_job(url, 32, S, S)[1], R)
            rows.append(("throughput: 8 clients × 4 images vs one 32-image job", f"{32 / conc:.1f} img/s",
                         f"{32 / single:.1f} img/s", f"{single / conc:.3f}×", "≥ 0.9×"))

            eighth, alone = paired(lambda: concurrent(url, 8, 4, S, 1)[1][-1][0],
                                   lambda: stream_job(url, 4, S, S)[1], R)
            rows.append(("first frame of the 8th concurrent client vs one whole 4-image job", f"{eighth:.3f} s",
                         f"{alone:.3f} s", f"{eighth / alone:.3f}×", "≤ 0.25×"))

            def sequential() -> float:
                t0 = time.perf_counter()
                for i in range(8):
                    stream_job(url, 1, S, S, seed=i)
                return time.perf_counter() - t0

            together, one_by_one = paired(lambda: concurrent(url, 8, 1, S, S)[0], sequential, R)
            rows.append(("8 single-image jobs: concurrent vs one after another", f"{together:.3f} s",
                         f"{one_by_one:.3f} s", f"{together / one_by_one:.3f}×", "report"))

            ttffs = [stream_job(url, 1, S, 1)[0] for _ in range(R)]
            rows.append(("time to first frame, warm server, 1 image", f"{statistics.median(ttffs) * 1000:.1f} ms",
                         "", "", "report"))
        finally:
            server.stop()

        for b in (4, 32):
            wk, bare = worker_vs_bare(model, b, S, R)
            rows.append((f"worker tick vs bare UNet forward, batch {b}", f"{wk * 1000:.1f} ms",
                         f"{bare * 1000:.1f} ms", f"{wk / bare:.3f}×", "≤ 1.03×"))

    print(f"\nmnist preset (random weights), 28×28, DDIM {S} steps, torch threads 1, "
          f"device cpu, median of {R}\n")
    print("| measurement | A | B | A/B | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
