"""Fields declared once: a dataclass field carries its help text and limits in ``metadata``.

:class:`~engine.training.config.TrainConfig` and :class:`~engine.sampling.spec.SamplingSpec` are built from
:func:`option`. Their command-line flags (:mod:`engine.cli.flags`) and the API's request models
(``app/http/schemas.py``) are generated from the same metadata, so a field's name, type, choices, bounds
and help are written in one place.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import field
from typing import Any, Literal

_MISSING: Any = dataclasses.MISSING


def option(default: Any = _MISSING, *, help: str, flag: bool = True, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None, zero_is_off: bool = False,
           metavar: str | None = None, flag_name: str | None = None, max_length: int | None = None,
           parse: typing.Callable[[str], Any] | None = None, default_factory: Any = _MISSING) -> Any:
    """A field with its help text and limits.

    ``flag``: the command line has a flag for it (``flag_name`` when the flag's name differs from the
    field's). ``ge``/``gt``/``le``/``lt``: bounds (None always passes for an optional field);
    ``max_length`` bounds a string. ``zero_is_off``: 0 means None (the feature is off). ``metavar``: the
    flag's value as ``--help`` shows it; ``parse`` reads it from the command line where the type alone
    cannot (a union such as "a class or 'any'").
    """
    meta = {"help": help, "flag": flag, "ge": ge, "gt": gt, "le": le, "lt": lt, "zero_is_off": zero_is_off,
            "metavar": metavar, "flag_name": flag_name, "max_length": max_length, "parse": parse}
    return field(default=default, default_factory=default_factory, metadata=meta)


@functools.cache
def config_types(cls: type) -> dict[str, Any]:
    """A config dataclass's resolved field annotations."""
    return typing.get_type_hints(cls)


def literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal`` annotation (also inside ``X | None``), else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    inner = [literal_choices(a) for a in typing.get_args(tp) if a is not type(None)]
    return inner[0] if len(inner) == 1 else None


def out_of_bounds(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    """Why ``value`` breaks the field's bounds, e.g. "must be ≥ 1"; None when it does not."""
    tests = (("ge", "≥", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
             ("le", "≤", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))
    for key, sign, ok in tests:
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            return f"must be {sign} {bound:g}"
    if meta.get("max_length") is not None and len(value) > meta["max_length"]:
        return f"must be at most {meta['max_length']} characters"
    return None
