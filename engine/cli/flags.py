"""Command-line flags generated from declared fields (:func:`engine.options.option`), in the manner of
improved-diffusion's ``add_dict_to_argparser``: ``--batch-size`` for ``batch_size``, with the field's type,
choices, bounds and help. ``ddpm train`` gets its flags from ``TrainConfig``; ``ddpm sample`` and
``ddpm eval`` get theirs from :class:`~engine.sampling.spec.SamplingSpec`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any

from ..options import config_types, literal_choices, out_of_bounds
from ..sampling.spec import SamplingSpec, SpecError, check_fields


def flag_of(name: str, meta: Mapping[str, Any] | None = None) -> str:
    """The flag of field ``name``: ``--batch-size`` for ``batch_size``, or the field's own ``flag_name``."""
    return "--" + ((meta or {}).get("flag_name") or name).replace("_", "-")


def _value_type(annotation: Any) -> type:
    """``int``/``float``/``str``/``bool`` from an annotation such as ``float | None`` or ``Literal[...]``."""
    choices = literal_choices(annotation)
    if choices is not None:
        return type(choices[0])
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _parser(kind: Callable[[str], Any], bounds: Mapping[str, Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as e:
            if bounds.get("parse") is None:
                raise  # argparse says "invalid int value: 'x'"
            raise argparse.ArgumentTypeError(str(e)) from None
        why = None
        if not (value == 0 and bounds.get("zero_is_off")) and isinstance(value, int | float | str):
            why = out_of_bounds(value, bounds)
        if why:
            raise argparse.ArgumentTypeError(f"{why}, got {text}")
        return value

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in "invalid int value"
    return parse


def add_field_flag(p: argparse.ArgumentParser, dest: str, annotation: Any, meta: Mapping[str, Any],
                   default: Any = None, help_text: str | None = None, check_bounds: bool = True) -> None:
    """One flag for one declared field. A default of None lets the caller tell what the user actually gave.

    ``check_bounds``: argparse refuses a value out of the field's bounds; without it, the caller checks."""
    flag, help_text = flag_of(dest, meta), help_text or meta["help"]
    kind = _value_type(annotation)
    if kind is bool:
        p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        return
    choices = literal_choices(annotation)
    if default is not None:
        help_text = f"{help_text} (here: {default})"
    parse = _parser(meta.get("parse") or kind, meta if check_bounds else {"parse": meta.get("parse")})
    p.add_argument(flag, dest=dest, type=parse, choices=choices, default=default,
                   metavar=None if choices else meta.get("metavar") or dest.upper(), help=help_text)


# ------------------------------------------------------------------------------ the sampling spec
def add_spec_flags(p: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None) -> None:
    """A flag per :class:`SamplingSpec` field; ``defaults`` are this command's own (``--seed 0``, say).

    Bounds are the spec's to check (:func:`spec_from_args`), so that a value out of range is one line that
    names the flag, as every other sampling error is."""
    hints = config_types(SamplingSpec)
    for f in dataclasses.fields(SamplingSpec):
        if f.metadata.get("flag", True):
            add_field_flag(p, f.name, hints[f.name], f.metadata, (defaults or {}).get(f.name), check_bounds=False)


def spec_from_args(args: argparse.Namespace) -> SamplingSpec:
    """The spec the flags ask for, its fields' bounds checked; a flag left out leaves the spec's default
    (filled by ``resolve``). Raises :class:`SpecError`."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingSpec)
             if f.metadata.get("flag", True) and getattr(args, f.name, None) is not None}
    spec = SamplingSpec(**given)
    check_fields(spec)
    return spec


def spec_flag_error(e: SpecError) -> str:
    """A :class:`SpecError` as the command line says it: the field's flag in place of its name."""
    meta = SamplingSpec.__dataclass_fields__[e.field].metadata
    return flag_of(e.field, meta) + e.message[len(e.field):]
