"""The rows of a fixed-step plan, before they are packed per sample (:class:`~engine.sampling.plan.SamplingPlan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

#: History writes: shift every slot down one and put the new value in slot 0; or leave the history as it is.
PUSH, KEEP = -1, -2

HistoryKind = Literal["x0", "eps"]


def f64(values: list) -> Tensor:
    """A table column (or ``(R, S)`` block) from Python floats."""
    return torch.tensor(values, dtype=torch.float64)


@dataclass(frozen=True)
class StepTable:
    """The rows of one plan: ``t`` the model timestep of each row (a timestep may repeat), and the update's
    coefficients, each float64 ``(R,)`` (``hist`` ``(R, S)``, S history slots). ``writes[r]`` says where row r's
    prediction (``history``: its x̂0 or its ε̂) goes: a slot index, :data:`PUSH` or :data:`KEEP`.
    ``langevin`` is 2α·snr² on Langevin corrector rows (Song et al. 2021, Algorithm 5), 0 elsewhere."""

    t: list[int]
    a: Tensor
    b0: Tensor
    sigma: Tensor
    e0: Tensor | None = None
    hist: Tensor | None = None
    writes: tuple[int, ...] = ()
    history: HistoryKind | None = None
    langevin: Tensor | None = None

    def __post_init__(self) -> None:
        R = len(self.t)
        zero = torch.zeros(R, dtype=torch.float64)
        for name in ("e0", "langevin"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, zero.clone())
        if self.hist is None:
            object.__setattr__(self, "hist", torch.zeros(R, 0, dtype=torch.float64))
        if not self.writes:
            object.__setattr__(self, "writes", (KEEP,) * R)
        assert all(v.shape[0] == R for v in (self.a, self.b0, self.sigma, self.e0, self.hist, self.langevin))
        assert len(self.writes) == R
