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
from ..diffusion.gaussian import GaussianDiffusion
from ..io.modelfile import ModelFileError
from ..sampling import DEFAULT_GUIDANCE, Conditioning, LabelSpec, SamplingPlan

Handler = Callable[[argparse.Namespace], int | None]


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


# ------------------------------------------------------------------------------- sampling options
def add_sampling_args(p: argparse.ArgumentParser, label_each: bool = True) -> None:
    """The sampler options ``sample`` and ``eval`` share; left out, each takes the server's default."""
    from ..sampling import SAMPLER_INFO, SAMPLERS, SPACINGS

    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="default: " + "; ".join(f"{k}: {v}" for k, v in SAMPLER_INFO.items()))
    p.add_argument("--steps", type=int, default=None, help="reverse steps = model evaluations (default: the sampler's)")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="timestep spacing (default: the sampler's)")
    p.add_argument("--eta", type=float, default=None,
                   help="ddim and dpmpp_2m_sde only, in [0, 1] (default: ddim 0, dpmpp_2m_sde 1)")
    p.add_argument("--label", default=None,
                   help="class-conditional models: a class, 'any' (drawn from the seed), 'none' (unconditional)"
                        + (" or 'each' (classes 0, 1, … in turn)" if label_each else "") + "; default any")
    p.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale s: eps_u + s(eps_c - eps_u); 1 = plain conditional, "
                        f"0 = unconditional (default {DEFAULT_GUIDANCE:g})")


def plan_from_args(args: argparse.Namespace, diffusion: GaussianDiffusion, conditional: bool = False) -> SamplingPlan:
    """The plan ``args`` ask for, with the server's defaults (for this kind of model) for what they leave out."""
    from ..sampling import SamplingPlan, choose, steps_limit

    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be ≥ 1, got {args.steps}")
    choice = choose(args.sampler, args.steps, args.spacing, args.eta, conditional=conditional)
    steps = min(choice.steps, steps_limit(diffusion, choice.sampler)) if args.steps is None else choice.steps
    try:
        return SamplingPlan.build(diffusion, choice.sampler, steps, choice.eta, spacing=choice.spacing)
    except ValueError as e:
        raise UserError(f"--{e}") from None


def labels_from_args(args: argparse.Namespace, num_classes: int) -> tuple[LabelSpec, float]:
    """``--label`` and ``--guidance`` checked against the model: (a class, "any", "each" or None, the scale)."""
    if not num_classes:
        if args.label is not None or args.guidance is not None:
            raise UserError("--label/--guidance: this model is unconditional")
        return None, 1.0
    spec = "any" if args.label is None else args.label
    label: LabelSpec = spec if spec in ("any", "each") else None if spec == "none" else _int_label(spec)
    if isinstance(label, int) and not 0 <= label < num_classes:
        raise UserError(f"--label must lie in [0, {num_classes - 1}], 'any', 'each' or 'none', got {label}")
    guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    if not 0.0 <= guidance <= 20.0:
        raise UserError(f"--guidance must lie in [0, 20], got {guidance}")
    return label, guidance


def cond_from_args(args: argparse.Namespace, num_classes: int, n: int, gen: torch.Generator) -> Conditioning | None:
    """Labels and guidance for a class-conditional model; drawn from ``gen`` before x_T, as the server does."""
    from ..sampling import resolve_labels

    spec, guidance = labels_from_args(args, num_classes)
    if not num_classes:
        return None
    if spec == "each":
        spec = [i % num_classes for i in range(n)]
    return Conditioning.of(resolve_labels(spec, n, num_classes, gen), guidance, num_classes)


def _int_label(spec: str) -> int:
    try:
        return int(spec)
    except ValueError:
        raise UserError(f"--label must be a class number, 'any' or 'none', got {spec!r}") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--uncond-model``, as ``sample``, ``eval`` and ``serve`` take them."""
    p.add_argument("--model", default=None, help="model file (.safetensors); default: the bundled MNIST model")
    p.add_argument("--uncond-model", default=None, metavar="FILE|none",
                   help="class-conditional models: an unconditional model file that answers the 'no label' rows "
                        "(guidance's eps_u), or 'none' for the model's own; default: none, except that the bundled "
                        "model file, named or not, has its bundled prior")


# ------------------------------------------------------------------------------- sample
def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw samples from a model file into a PNG grid or an .npz")
    add_model_args(p)
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .png (grid) or .npz (uint8 images (N, H, W, C))")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-clip", action="store_true", help="do not clip x̂0 to the data range")
    p.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from ..io.images import save_samples, to_uint8
    from ..io.loader import load_model
    from ..sampling import sample

    if not 1 <= args.n <= 100_000:
        raise UserError(f"--n must lie in [1, 100000], got {args.n}")
    if not str(args.out).lower().endswith((".png", ".npz")):
        raise UserError(f"--out must end in .png or .npz, got {args.out!r}")
    device = resolve_device(args.device)
    m = load_model(args.model, device, args.uncond_model)
    plan = plan_from_args(args, m.diffusion, m.num_classes > 0)
    gen = torch.Generator().manual_seed(args.seed)
    cond = cond_from_args(args, m.num_classes, args.n, gen)
    t0 = time.perf_counter()
    # One generator drawn in one batch is what the server does for a job: same seed, same images.
    x = sample(m.net, m.diffusion, plan, (args.n, *m.sample_shape), gen, device,
               clip=not args.no_clip, progress=True, cond=cond)
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
