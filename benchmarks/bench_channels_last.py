"""CPU sampling with channels-last UNet weights and inputs vs plain NCHW, same model, one run.

    .venv/bin/python benchmarks/bench_channels_last.py [--batches 16 125] [--steps 50] [--repeats 3]

The bundled model, DDIM with ``--steps`` steps, the same seed on both sides; runs are interleaved
(NCHW, NHWC, NCHW, …) and the median is reported, so machine noise hits both sides alike. Also
prints the largest pixel difference between the two layouts' final samples (float rounding only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine import SamplingPlan, load_model_file, sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 125])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = load_model_file(None, "cpu")  # a CPU load switches channels-last on
    plan = SamplingPlan.build(m.diffusion, "ddim", args.steps, 0.0)

    def layout(nhwc: bool) -> None:
        if nhwc:
            m.net.use_channels_last()
        else:
            m.net.to(memory_format=torch.contiguous_format)
            m.net.channels_last = False

    print(f"DDIM {args.steps}, bundled model, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| batch | NCHW (s) | channels-last (s) | NCHW / channels-last | largest pixel difference |")
    print("|---|---|---|---|---|")
    for n in args.batches:
        times: dict[bool, list[float]] = {False: [], True: []}
        outs: dict[bool, torch.Tensor] = {}
        for _ in range(args.repeats):
            for nhwc in (False, True):
                layout(nhwc)
                t0 = time.perf_counter()
                outs[nhwc] = sample(m.net, m.diffusion, plan, (n, *m.sample_shape), torch.Generator().manual_seed(0),
                                    "cpu")
                times[nhwc].append(time.perf_counter() - t0)
        a, b = statistics.median(times[False]), statistics.median(times[True])
        diff = (outs[False] - outs[True]).abs().max().item()
        print(f"| {n} | {a:.2f} | {b:.2f} | {a / b:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
