"""The ``sample`` subcommand: draw images from a model file into a PNG grid or an ``.npz``.

Its sampling flags are generated from :class:`~engine.sampling.spec.SamplingSpec`, and the request goes
through :func:`engine.sampling.spec.resolve` and the one stepper, as a server job does: the same seed gives
the same images here, through ``/samples`` and through the stream.
"""

from __future__ import annotations

import argparse
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    from . import add_model_args
    from .flags import add_spec_flags

    p = sub.add_parser("sample", help="draw samples from a model file into a PNG grid or an .npz")
    add_model_args(p)
    add_spec_flags(p, defaults={"seed": 0})
    p.add_argument("--out", required=True, help="output .png (grid) or .npz (uint8 images (N, H, W, C))")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..io.images import save_samples, to_uint8
    from ..io.loader import load_model
    from ..sampling import last_frame, resolve, run_frames
    from ..sampling.solvers import ADAPTIVE
    from . import UserError
    from .flags import spec_from_args

    if not str(args.out).lower().endswith((".png", ".npz")):
        raise UserError(f"--out must end in .png or .npz, got {args.out!r}")
    spec = spec_from_args(args)  # before the model loads, so a typo fails at once
    device = resolve_device(args.device)
    m = load_model(args.model, device, args.uncond_model)
    run = resolve(spec, m)
    t0 = time.perf_counter()
    adaptive = run.plan.sampler == ADAPTIVE
    plan = run.plan
    bar = f"{plan.sampler}, at most {plan.K} evaluations" if adaptive else f"{plan.sampler} {plan.K} steps"
    last = last_frame(run_frames(run, m, device), bar, None if adaptive else run.plan.K)
    # a guidance grid's rows are its scales: n images to a row
    out = save_samples(args.out, to_uint8(last.x_t, m.card.value_range), nrow=spec.n if run.rows > 1 else None)
    print(f"wrote {last.x_t.shape[0]} samples to {out} in {time.perf_counter() - t0:.1f}s ({run.plan.sampler}, "
          f"{last.step} model evaluations)")
    return 0
