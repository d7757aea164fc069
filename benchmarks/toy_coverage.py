"""The 2D playground's learning speed: 8gaussians mode coverage against training seconds (``ddpm toy``'s recipe),
2000 samples by respaced DDPM 100 from the EMA model. Prints a markdown table.

    python benchmarks/toy_coverage.py --seconds 2 5 10 20
"""

from __future__ import annotations

import argparse

import torch

from engine.data.toy2d import toy_points
from engine.sampling.loop import last_frame
from engine.training.toy import ToyTrainer, mode_coverage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", nargs="+", type=float, default=[2, 5, 10, 20])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| training seconds | steps | within 0.5 of a mode | smallest mode | largest mode |")
    print("|---|---|---|---|---|")
    for secs in args.seconds:
        trainer = ToyTrainer(lambda n, g: toy_points("8gaussians", n, g), args.seed)
        for _ in trainer.train_for(secs):
            pass
        x = last_frame(trainer.sample_iter(2000, "ddpm", 100, torch.Generator().manual_seed(args.seed))).x_t
        cov, shares = mode_coverage(x)
        print(f"| {secs:g} | {trainer.step} | {100 * cov:.1f} % | {100 * min(shares):.1f} % | "
              f"{100 * max(shares):.1f} % |", flush=True)


if __name__ == "__main__":
    main()
