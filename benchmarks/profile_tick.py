"""Where a worker tick's time goes: the UNet forward against everything else the tick does.

    .venv/bin/python benchmarks/profile_tick.py [--batch 32] [--steps 50] [--threads 1] [--frame-every 1] [--sampler S]

Steps a real :class:`app.runtime.worker.SamplingWorker` by hand on one job (the "mnist" preset, random
weights, 28×28, channels-last CPU load; by default only the last frame, as in ``bench_server.py``'s
tick comparison), with the UNet wrapped in a timer, and
reports per tick: the whole tick, the forward inside it, and the rest (coefficients, noise, the
update, the frame's host copies, bookkeeping). ``bench_server.py`` compares whole ticks with bare
forwards; on a 2-core host that ratio swings by a few percent between runs, and this shows how much
of it the tick's own work can explain. Medians over the ticks after the first five; CPU only.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app.runtime.frames import JobLog  # noqa: E402
from app.runtime.worker import SamplingWorker  # noqa: E402
from benchmarks.bench_server import mnist_model_file  # noqa: E402
from engine import SamplingSpec, load_model_file, resolve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (bench_server uses 1)")
    ap.add_argument("--frame-every", type=int, help="send a frame every k steps (default: only the last)")
    ap.add_argument("--sampler", default="ddim", help="any sampler; the multistep ones keep an x̂0 history")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        m = load_model_file(mnist_model_file(Path(tmp) / "mnist.safetensors"), torch.device("cpu"))

    forward_ms: list[float] = []

    def timed_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = m.net(x, t)
        forward_ms.append((time.perf_counter() - t0) * 1000)
        return out

    # Not started: this thread steps it, so the tick is timed without a loop thread around it.
    w = SamplingWorker(dataclasses.replace(m, net=timed_net), torch.device("cpu"), max_batch=args.batch,
                       max_active_jobs=1, max_queue=1)
    run = resolve(SamplingSpec(n=args.batch, sampler=args.sampler, steps=args.steps, seed=0), m)
    plan = run.plan
    frame_every = args.frame_every or plan.K
    job = w.submit(run, frame_every, JobLog("png", 8, w.encoder, m.card.value_range))
    tick_ms: list[float] = []
    with torch.inference_mode():
        while job.step < plan.K:
            with w._cv:
                w._admit()
                batch = w._select()
            t0 = time.perf_counter()
            w._tick(batch)
            tick_ms.append((time.perf_counter() - t0) * 1000)
    w.encoder.close()

    tick, forward = statistics.median(tick_ms[5:]), statistics.median(forward_ms[5:])
    rest = statistics.median([a - b for a, b in zip(tick_ms[5:], forward_ms[5:], strict=True)])
    print(f"\nmnist preset, batch {args.batch}, {plan.sampler} {plan.K} steps, a frame every {frame_every} steps, "
          f"torch threads {args.threads}, median ms per tick\n")
    print("| whole tick | forward | rest of the tick | rest / forward |")
    print("|---|---|---|---|")
    print(f"| {tick:.3f} | {forward:.3f} | {rest:.3f} | {rest / forward * 100:.2f} % |")


if __name__ == "__main__":
    main()
