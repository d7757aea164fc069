"""The engine's command line: ``python -m engine train|sample|eval|export``.

Each subcommand lives in its own module and registers itself through ``add_parser(sub)``;
``app/cli.py`` reuses :func:`build_parser` and adds ``serve``, so the engine never imports the app.
Errors the user can fix (a wrong path, a bad flag value, a model file that does not match)
are printed as one line and exit with status 2; a traceback is never the message.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import torch

from ..devices import resolve_device
from ..io.modelfile import ModelFileError

Handler = Callable[[argparse.Namespace], int | None]


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


# ------------------------------------------------------------------------------- sample
def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw samples from a model file into a PNG grid or an .npz")
    p.add_argument("--model", default=None, help="model file (.safetensors); default: the bundled MNIST model")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--steps", type=int, default=None, help="reverse steps (default: all T)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .png (grid) or .npz (uint8 images (N, H, W, C))")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-clip", action="store_true", help="do not clip x̂0 to the data range")
    p.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from ..io.images import save_samples, to_uint8
    from ..io.loader import load_model_file
    from ..sampling.samplers import SamplingPlan, sample

    if not 1 <= args.n <= 100_000:
        raise UserError(f"--n must lie in [1, 100000], got {args.n}")
    if not str(args.out).lower().endswith((".png", ".npz")):
        raise UserError(f"--out must end in .png or .npz, got {args.out!r}")
    device = resolve_device(args.device)
    m = load_model_file(args.model, device)
    plan = SamplingPlan.build(m.diffusion, args.sampler, args.steps, args.eta)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    # One generator drawn in one batch is what the server does for a job: same seed, same images.
    x = sample(m.net, m.diffusion, plan, (args.n, *m.sample_shape), gen, device,
               clip=not args.no_clip, progress=True)
    out = save_samples(args.out, to_uint8(x, m.card.value_range))
    print(f"wrote {args.n} samples to {out} in {time.perf_counter() - t0:.1f}s ({plan.sampler}, {plan.K} steps)")
    return 0


# ------------------------------------------------------------------------------- parser
_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [_add_sample]


def _optional_registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands from sibling modules (train, export, eval), each optional at import time."""
    out = []
    for mod_name in ("train", "eval"):
        try:
            mod = __import__(f"{__package__}.{mod_name}", fromlist=["add_parser"])
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod_name}":
                raise
            continue
        out.append(mod.add_parser)
    return out


def build_parser(prog: str = "ddpm") -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser with every engine subcommand; callers may add more to the returned ``sub``."""
    parser = argparse.ArgumentParser(prog=prog, description="DDPM engine: train, sample, evaluate and export models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _optional_registrars() + _REGISTRARS:
        add(sub)
    return parser, sub


def dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the chosen subcommand, turning user errors into one-line messages (exit 2)."""
    try:
        return int(args.handler(args) or 0)
    # OSError covers a full disk or a read-only directory, wherever it strikes: the message says which.
    except (UserError, ModelFileError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{parser.prog} {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None, prog: str = "python -m engine") -> int:
    parser, _ = build_parser(prog)
    return dispatch(parser, parser.parse_args(argv))
