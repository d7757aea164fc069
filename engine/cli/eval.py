"""The ``eval`` subcommand: sample from a model file and print its quality metrics as one JSON object.

    python -m engine eval --model FILE --n 1000 --sampler ddim --steps 50 [--bpd ode] [--out metrics.json]

Its sampling flags are generated from :class:`~engine.sampling.spec.SamplingSpec`, as ``sample``'s are.
Progress bars go to stderr, so stdout is exactly the JSON (pipe it to ``jq``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.metrics import BPD_METHODS
    from . import add_model_args
    from .flags import add_spec_flags

    p = sub.add_parser("eval", help="sample and print quality metrics as JSON (FLD, confidence, entropy, "
                                    "memorization, bits/dim, FID with local weights)")
    add_model_args(p)
    add_spec_flags(p, defaults={"n": 1000, "seed": 0})
    p.add_argument("--batch-size", type=int, default=250,
                   help="images per sampling job; batch i uses seed + i, like `sample --seed` (default 250)")
    p.add_argument("--device", default="auto")
    p.add_argument("--bpd-images", type=int, default=100, help="held-out images for bits/dim (default 100; 0 skips)")
    p.add_argument("--bpd-timesteps", type=int, default=20,
                   help="t drawn per image for the unbiased bits/dim estimate (default 20; 0 = exact T-term sum)")
    p.add_argument("--bpd", default=BPD_METHODS[0], metavar="|".join(BPD_METHODS),
                   help="bits/dim by the variational bound only (bound, the default), or also the exact likelihood "
                        "through the probability-flow ODE on the same images (ode: bpd_ode, bpd_ode_stderr, "
                        "bpd_ode_nfev)")
    p.add_argument("--copy-percentile", type=float, default=0.0,
                   help="near-copy threshold: this percentile of held-out→train NN distances "
                        "(default 0 = closer than any held-out image)")
    p.add_argument("--data-root", default=None, help="dataset files, for models not trained on the bundled MNIST-5k")
    p.add_argument("--fid-weights", default=None,
                   help="local InceptionV3 weights for FID (needs torch-fidelity; never downloaded)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--cache-dir", default=None,
                   help="keep each finished sampling batch here; run the same command again after an "
                        "interruption and only the missing batches are drawn")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..evaluation.metrics import check_eval_args, evaluate_model
    from ..io.loader import load_model
    from . import UserError
    from .flags import spec_from_args

    # SpecError and MetricsError are ValueErrors: the dispatcher prints them as one line and exits with status 2.
    spec = spec_from_args(args)  # before the model loads, so a typo fails at once
    check_eval_args(args.batch_size, args.bpd_images, args.bpd_timesteps, args.copy_percentile, bpd=args.bpd,
                    cli=True)
    if args.out and not Path(args.out).parent.is_dir():
        raise UserError(f"--out: folder {Path(args.out).parent} does not exist")
    if args.cache_dir and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        raise UserError(f"--cache-dir: {args.cache_dir} exists and is not a folder")
    device = resolve_device(args.device)
    m = load_model(args.model, device, args.uncond_model)
    res = evaluate_model(m, spec, args.batch_size, device, args.bpd_images, args.bpd_timesteps or None,
                         data_root=args.data_root, fid_weights=args.fid_weights,
                         copy_percentile=args.copy_percentile, cache_dir=args.cache_dir, bpd=args.bpd)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
