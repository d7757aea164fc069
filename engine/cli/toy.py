"""The ``toy`` subcommand: train the 2D playground's denoiser for a time budget and write fresh samples
(:mod:`engine.training.toy`)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..data.toy2d import DEFAULT_TOY_DATASET, TOY_DATASETS
    from ..training.toy import DEFAULT_TOY_STEPS, TOY_SAMPLERS

    p = sub.add_parser("toy", help="train a 2D point denoiser for S seconds and write N samples (float32 (N, 2))")
    p.add_argument("--dataset", choices=TOY_DATASETS, default=DEFAULT_TOY_DATASET,
                   help=f"default: {DEFAULT_TOY_DATASET}")
    p.add_argument("--points", default=None, metavar="FILE.npy",
                   help="your own points, an array of shape (N, 2), instead of --dataset")
    p.add_argument("--seconds", type=float, default=20.0, help="training time budget (default 20)")
    p.add_argument("--n", type=int, default=2000, help="samples to write (default 2000)")
    p.add_argument("--sampler", default="ddpm", choices=TOY_SAMPLERS, help="any of the images' samplers (default "
                                                                          "ddpm)")
    p.add_argument("--steps", type=int, default=None, help=f"its steps (default {DEFAULT_TOY_STEPS}; ode_rk45 "
                                                           "picks its own)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the network and the samples")
    p.add_argument("--out", required=True, help="output .npy: float32 (n, 2), in the data's coordinates")
    p.set_defaults(handler=run_toy)


def run_toy(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..data.toy2d import load_points, resample, toy_points
    from ..sampling.errors import SpecError
    from ..sampling.loop import last_frame
    from ..sampling.solvers import ADAPTIVE
    from ..training.toy import ToyTrainer, toy_plan
    from . import UserError

    if not str(args.out).lower().endswith(".npy"):
        raise UserError(f"--out must end in .npy, got {args.out!r}")
    for flag, value in (("--seconds", args.seconds), ("--n", args.n)):
        if not value > 0:
            raise UserError(f"{flag} must be > 0, got {value:g}")
    if args.points is not None:
        try:
            mine = load_points(args.points)
        except OSError as e:
            raise UserError(f"--points: cannot read {args.points!r} ({type(e).__name__})") from None

        def data(n: int, g: torch.Generator) -> torch.Tensor:
            return resample(mine, n, g)
    else:
        def data(n: int, g: torch.Generator) -> torch.Tensor:
            return toy_points(args.dataset, n, g)

    trainer = ToyTrainer(data, args.seed)
    try:  # before training: a step count the sampler cannot take is known now
        plan = toy_plan(args.sampler, args.steps)
    except SpecError as e:
        raise UserError(f"--{e.message}") from None
    what = args.points or args.dataset
    with tqdm(total=round(args.seconds, 1), desc=f"toy: training on {what}", unit="s") as bar:
        for p in trainer.train_for(args.seconds):
            bar.n = round(min(p.seconds, args.seconds), 1)
            bar.set_postfix(step=p.step, loss=f"{p.loss:.3f}")
            bar.refresh()
    frames = trainer.sample_iter(args.n, args.sampler, args.steps, torch.Generator().manual_seed(args.seed))
    x = last_frame(frames, f"toy: sampling {args.n} points", None if args.sampler == ADAPTIVE else plan.K).x_t
    np.save(args.out, x.numpy().astype(np.float32))
    print(f"wrote {args.n} points to {args.out} after {trainer.step} training steps in {trainer.seconds:.1f}s")
    return 0
