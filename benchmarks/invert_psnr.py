"""DDIM inversion's round trip against steps: PSNR (dB, pixels in [0, 1]) of held-out digits inverted under their
own label and decoded back on the same grid (``engine.sampling.invert``). Prints a markdown table.

    python benchmarks/invert_psnr.py --n 20 --steps 10 20 50 100
"""

from __future__ import annotations

import argparse
import time

import torch

from engine import load_dataset, load_model
from engine.sampling.invert import invert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file (default: the bundled one)")
    ap.add_argument("--n", type=int, default=20, help="held-out digits, evenly spaced through the test split")
    ap.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50, 100])
    args = ap.parse_args()
    m = load_model(args.model, "cpu")
    test = load_dataset("mnist5k", "test")
    idx = torch.linspace(0, len(test) - 1, args.n).round().long()
    x0, labels = test.images[idx], test.labels[idx].tolist()
    print("| steps each way | evaluations | PSNR mean | min | max | seconds |")
    print("|---|---|---|---|---|---|")
    for k in args.steps:
        t0 = time.perf_counter()
        p = invert(m, x0, k, labels if m.num_classes else None).psnr
        print(f"| {k} | {2 * k} | {float(p.mean()):.1f} | {float(p.min()):.1f} | {float(p.max()):.1f} | "
              f"{time.perf_counter() - t0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
