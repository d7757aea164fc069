"""The page's default job through a real server vs the bare sampling loop, at torch's default threads.

    .venv/bin/python benchmarks/bench_page_job.py [--repeats 3] [--other-root /tmp/before]

One job as the page sent it to the unconditional model (respaced DDPM 100, 16 images, seed 0, a frame every
step), read over SSE from ``ddpm serve`` on 127.0.0.1, against :func:`engine.sample` with the same
plan, shape and seed in this process. Nothing sets OMP_NUM_THREADS, as with `make demo`.
``--other-root`` also serves from another checkout (say ``git worktree add /tmp/before <rev>``) so
that two revisions are timed side by side in one run. Runs are interleaved; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app.local_server import start_server, stream_seconds  # noqa: E402
from engine import UNCONDITIONAL_MODEL, SamplingPlan, load_model_file, sample  # noqa: E402

N, STEPS, SAMPLER, SEED = 16, 100, "ddpm", 0


def page_job(url: str) -> float:
    """Seconds from the request to the ``done`` event."""
    params = {"n": N, "steps": STEPS, "sampler": SAMPLER, "seed": SEED, "frame_every": 1}
    return stream_seconds(url, params, timeout=600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--other-root", type=Path, help="also serve from this checkout, timed alongside")
    ap.add_argument("--bare-threads", type=int, nargs="*", default=[],
                    help="also time the bare loop at these torch thread counts (e.g. 1)")
    args = ap.parse_args()
    default_threads = torch.get_num_threads()

    m = load_model_file(UNCONDITIONAL_MODEL)
    plan = SamplingPlan.build(m.diffusion, SAMPLER, STEPS)

    def bare(threads: int = default_threads) -> float:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        with torch.inference_mode():
            sample(m.net, m.diffusion, plan, (N, *m.sample_shape), torch.Generator().manual_seed(SEED))
        elapsed = time.perf_counter() - t0
        torch.set_num_threads(default_threads)
        return elapsed

    roots = {"this checkout": ROOT} | ({f"{args.other_root}": args.other_root} if args.other_root else {})
    # threads=None: torch's default thread count, as `make demo` serves
    servers = {name: start_server(UNCONDITIONAL_MODEL, Path(f"/tmp/bench_page_job_{i}.log"), timeout=120, threads=None,
                                  root=root) for i, (name, root) in enumerate(roots.items())}
    times: dict[str, list[float]] = {"bare loop": [], **{f"bare loop, {k} thread(s)": [] for k in args.bare_threads},
                                     **{name: [] for name in servers}}
    try:
        bare()
        for server in servers.values():
            page_job(server.url)  # first-request costs are not what we measure
        for _ in range(args.repeats):
            times["bare loop"].append(bare())
            for k in args.bare_threads:
                times[f"bare loop, {k} thread(s)"].append(bare(k))
            for name, server in servers.items():
                times[name].append(page_job(server.url))
    finally:
        for server in servers.values():
            server.stop()

    base = statistics.median(times["bare loop"])
    print(f"\nunconditional model, {SAMPLER} {STEPS} steps, {N} images, a frame every step, torch threads "
          f"{default_threads} unless named, median of {args.repeats}\n")
    print("| path | seconds | runs | vs bare loop |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {' '.join(f'{t:.2f}' for t in ts)} | {med / base:.2f}× |")


if __name__ == "__main__":
    main()
