"""The error a sampling request raises when one of its fields cannot be served, before or during its run."""

from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """A request field that cannot be served: ``field`` names it, ``value`` is what was asked, and ``message``
    (which begins with the field's name) says the limit it broke."""

    def __init__(self, field: str, message: str, value: Any = None) -> None:
        assert message.startswith(field), message
        super().__init__(message)
        self.field, self.message, self.value = field, message, value
