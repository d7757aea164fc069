"""The engine's command line: ``python -m engine train|sample|eval|export``.

Each subcommand lives in its own module and registers itself through ``add_parser(sub)``;
``app/cli.py`` reuses :func:`build_parser` and adds ``serve``, so the engine never imports the app.
Errors the user can fix (a wrong path, a bad flag value, a model file that does not match)
are printed as one line and exit with status 2; a traceback is never the message.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from ..io.modelfile import ModelFileError
from ..sampling.spec import SpecError

Handler = Callable[[argparse.Namespace], int | None]
#: The subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("train", "export", "sample", "eval", "invert", "interpolate", "toy")


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--uncond-model``, as ``sample``, ``eval`` and ``serve`` take them."""
    p.add_argument("--model", default=None, help="model file (.safetensors); default: the bundled MNIST model")
    p.add_argument("--uncond-model", default=None, metavar="FILE|none",
                   help="class-conditional models: an unconditional model file that answers the 'no label' rows "
                        "(guidance's eps_u), or 'none' for the model's own; default: none, except that the bundled "
                        "model file, named or not, has its bundled prior")


def build_parser(prog: str = "ddpm") -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser with every engine subcommand; callers may add more to the returned ``sub``."""
    parser = argparse.ArgumentParser(prog=prog, description="DDPM engine: train, sample, evaluate and export models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    return parser, sub


def dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the chosen subcommand, turning user errors into one-line messages (exit 2)."""
    from .flags import spec_flag_error

    try:
        return int(args.handler(args) or 0)
    except SpecError as e:  # names the flag, as argparse does for a value it refuses
        print(f"{parser.prog} {args.command}: error: {spec_flag_error(e)}", file=sys.stderr)
        return 2
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
