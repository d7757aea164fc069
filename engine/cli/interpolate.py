"""The ``interpolate`` subcommand: a strip of images between two seeds' x_T (and two classes' embeddings),
decoded by a deterministic sampler (:mod:`engine.sampling.interpolate`)."""

from __future__ import annotations

import argparse


def _two(text: str, what: str, none: bool) -> tuple[int | None, int | None]:
    words = [w.strip() for w in text.split(",")]
    try:
        if len(words) != 2:
            raise ValueError
        a, b = (None if none and w in ("none", "null") else int(w) for w in words)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be two {what} A,B, got {text!r}") from None
    return a, b


def _seeds(text: str) -> tuple[int | None, int | None]:
    return _two(text, "seeds (none for an end --from-inversion gives)", none=True)


def _labels(text: str) -> tuple[int | None, int | None]:
    return _two(text, "classes (or none)", none=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from . import add_model_args

    p = sub.add_parser("interpolate", help="a strip from one seed's x_T to another's (and one class to another)")
    add_model_args(p)
    p.add_argument("--seeds", type=_seeds, required=True, metavar="A,B", help="the strip's two ends")
    p.add_argument("--from-inversion", default=None, metavar="INV.npz",
                   help="start the strip at this x_T (ddpm invert --out) instead of seed A: give --seeds none,B")
    p.add_argument("--labels", type=_labels, default=None, metavar="LA,LB",
                   help="class-conditional models: the classes at the two ends, blended along the strip (none: no "
                        "label); default: no label throughout")
    p.add_argument("--k", type=int, default=9, help="images along the strip (default 9)")
    p.add_argument("--sampler", default=None, help="a deterministic sampler (default ddim)")
    p.add_argument("--steps", type=int, default=None, help="default: the sampler's")
    p.add_argument("--guidance", type=float, default=None, help="class-conditional models; default: the model's")
    p.add_argument("--out", required=True, help="output .png (one row) or .npz (uint8 images (k, H, W, C))")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=run_interpolate)


def run_interpolate(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..io.images import save_samples, to_uint8
    from ..io.loader import load_model
    from ..sampling import SamplingSpec, SpecError, last_frame, run_frames
    from ..sampling.interpolate import interpolation_run
    from . import UserError

    if not str(args.out).lower().endswith((".png", ".npz")):
        raise UserError(f"--out must end in .png or .npz, got {args.out!r}")
    device = resolve_device(args.device)
    m = load_model(args.model, device, args.uncond_model)
    spec = SamplingSpec(n=args.k, sampler=args.sampler, steps=args.steps, guidance=args.guidance)
    first, second = args.seeds
    if second is None:
        raise UserError("--seeds: end B needs a seed")
    if (first is None) == (args.from_inversion is None):
        raise UserError("--seeds: end A needs a seed or --from-inversion, not both nor neither")
    if args.from_inversion is not None:
        first = _inverted_x_T(args.from_inversion, m.sample_shape)
    try:
        run = interpolation_run(spec, m, (first, second), args.labels)
    except SpecError as e:  # this command's own names for the strip's fields
        flag = {"labels": "--labels", "n": "--k"}.get(e.field)
        if flag is None:
            raise
        raise UserError(flag + e.message[len(e.field):]) from None
    bar = f"interpolate: {args.k} images, {run.plan.sampler}"
    last = last_frame(run_frames(run, m, device), bar, run.plan.K)
    out = save_samples(args.out, to_uint8(last.x_t, m.card.value_range), nrow=args.k)
    print(f"wrote a strip of {args.k} images to {out} ({run.plan.sampler}, {last.step} model evaluations)")
    return 0


def _inverted_x_T(path: str, shape: tuple[int, ...]):
    """The ``x_T`` ``(1, C, H, W)`` of a ``ddpm invert --out`` file; UserError naming the flag otherwise."""
    import numpy as np
    import torch

    from . import UserError

    try:
        with np.load(path, allow_pickle=False) as f:
            x = f["x_T"]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"--from-inversion: cannot read an x_T from {path!r} ({type(e).__name__})") from None
    if tuple(x.shape) != (1, *shape):
        raise UserError(f"--from-inversion: x_T has shape {tuple(x.shape)}, this model's is {(1, *shape)}")
    return torch.from_numpy(np.asarray(x, dtype=np.float32))
