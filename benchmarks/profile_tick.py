"""Where a worker tick's time goes: the UNet forward against everything else the tick does.

    .venv/bin/python benchmarks/profile_tick.py [--batch 32] [--steps 50] [--threads 1]

Runs the pieces of ``app.worker.SamplingWorker._step`` one after another on the "mnist" preset
(random weights, 28×28, channels-last CPU load) and times each with ``perf_counter``: gathering the
step coefficients, the forward, drawing the noise, the update, and the two host copies for a frame.
``bench_server.py`` compares whole ticks with bare forwards; on a 2-core host that ratio swings by a
few percent between runs, and this breakdown shows how much of it the tick's own work can explain.
Medians over the steps after the first five; CPU only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.bench_server import mnist_model_file  # noqa: E402
from engine import SamplingPlan, StepCoeffs, draw_noise, load_model_file, sampling_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (bench_server uses 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        m = load_model_file(mnist_model_file(Path(tmp) / "mnist.safetensors"), torch.device("cpu"))
    plan = SamplingPlan.build(m.diffusion, "ddim", args.steps, 0.0)
    n, g = args.batch, torch.Generator().manual_seed(0)
    x = draw_noise((n, *m.sample_shape), g, "cpu")
    parts: dict[str, list[float]] = {k: [] for k in ("coefficients", "forward", "noise", "update", "host copies")}
    with torch.inference_mode():
        for k in range(plan.K):
            t = [time.perf_counter()]
            c = StepCoeffs.cat([plan.coeffs(k, n, "cpu", True)])
            t.append(time.perf_counter())
            out = m.net(x, c.t)
            t.append(time.perf_counter())
            noise = draw_noise(tuple(x.shape), g, "cpu")
            t.append(time.perf_counter())
            x_prev, x0 = sampling_step(m.diffusion.prediction, out, x, c, noise, m.diffusion.clip_range)
            t.append(time.perf_counter())
            x_prev.to("cpu", copy=True), x0.to("cpu", copy=True)
            t.append(time.perf_counter())
            x = x_prev
            for name, a, b in zip(parts, t, t[1:], strict=False):
                parts[name].append((b - a) * 1000)
    med = {name: statistics.median(v[5:]) for name, v in parts.items()}
    rest = sum(v for name, v in med.items() if name != "forward")
    print(f"\nmnist preset, batch {n}, DDIM {plan.K} steps, torch threads {args.threads}, median ms per step\n")
    print("| part | ms |")
    print("|---|---|")
    for name, v in med.items():
        print(f"| {name} | {v:.3f} |")
    print(f"| everything but the forward | {rest:.3f} ({rest / med['forward'] * 100:.2f} % of the forward) |")


if __name__ == "__main__":
    main()
