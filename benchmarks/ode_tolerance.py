"""ode_rk45's cost and accuracy against its tolerances: evaluations, and the final 8-bit pixels against a tight
solve (rtol = atol = 1e-5) from the same x_T. One batch of ``--n`` images, labels 0, 1, … on a class-conditional
model with its default guidance. Prints a markdown table.

    python benchmarks/ode_tolerance.py --n 16 --tols 1e-1 3e-2 1e-2 3e-3 1e-3 1e-4
"""

from __future__ import annotations

import argparse
import time

import torch

from engine import SamplingSpec, last_frame, load_model, resolve, run_frames, to_uint8

REFERENCE = 1e-5


def run(m, n: int, tol: float, seed: int) -> tuple[torch.Tensor, int, float]:
    labels = "each" if m.num_classes else None
    spec = SamplingSpec(n=n, sampler="ode_rk45", rtol=tol, atol=tol, labels=labels, seed=seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        last = last_frame(run_frames(resolve(spec, m), m, "cpu"))
    return to_uint8(last.x_t, m.card.value_range).int(), last.step, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file (default: the bundled one)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tols", nargs="+", type=float, default=[1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4])
    args = ap.parse_args()
    m = load_model(args.model, "cpu")
    ref, ref_nfe, ref_s = run(m, args.n, REFERENCE, args.seed)
    print(f"reference rtol = atol = {REFERENCE:g}: {ref_nfe} evaluations, {ref_s:.1f} s")
    print("\n| rtol = atol | evaluations | seconds | max |Δ| (8-bit levels) | mean |Δ| | pixels off by > 1 level |")
    print("|---|---|---|---|---|---|")
    for tol in args.tols:
        u8, nfe, secs = run(m, args.n, tol, args.seed)
        d = (u8 - ref).abs().float()
        print(f"| {tol:g} | {nfe} | {secs:.1f} | {int(d.max())} | {float(d.mean()):.2f} | "
              f"{100 * float((d > 1).float().mean()):.2f} % |", flush=True)


if __name__ == "__main__":
    main()
