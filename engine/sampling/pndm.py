"""PLMS and PNDM (Liu et al. 2022, "Pseudo numerical methods for diffusion models on manifolds") as rows of the one
update: a linear multistep method on the noise prediction, whose history slots hold previous ε̂.

Both follow diffusers' ``PNDMScheduler`` step for step, ``set_alpha_to_one=False`` included: every move is the
"transfer" φ(x, ε, t → t') = √(ᾱ'/ᾱ)·x − (ᾱ' − ᾱ)/(ᾱ·√(1−ᾱ') + √(ᾱ(1−ᾱ)ᾱ'))·ε (the paper's eq. (9)), and
the move after the last level goes to ᾱ_0 (a level with σ ≈ 0.01 at T = 1000), not to σ = 0.

* ``plms`` (``skip_prk_steps=True``): ε' = ε̂ (first), Heun's average (second, at the same level again), then
  the 2-, 3- and 4-step Adams–Bashforth combinations (eq. (12)); K levels take K + 1 evaluations.
* ``pndm``: three pseudo Runge–Kutta steps of four evaluations each (eq. (13)) over the first three levels,
  then the 4-step combination; K levels take K + 9 evaluations.

A row sees the current x (not a sub-step's starting point), so each sub-step's transfer from the RK base is
rewritten in terms of the current x and the slots: x_base = (x − c_e·ε_used)/c_x.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..diffusion.schedule import NoiseSchedule
from .table import KEEP, PUSH, StepTable, f64

#: Adams–Bashforth weights on (ε̂, ε(−1), ε(−2), ε(−3)) by how many predictions are known (Liu et al. eq. (12)).
ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
#: History slots: the last three ε̂ of the multistep (slot 0 the newest), and two for a Runge–Kutta step's stages.
SLOTS = 5
#: Levels PNDM needs: its Runge–Kutta warm-up spans the first three intervals.
PNDM_MIN_LEVELS = 4


def transfer(ab: list[float], t: int, prev: int) -> tuple[float, float]:
    """(c_x, c_e) of φ(x, ε, t → prev) = c_x·x + c_e·ε; ``prev < 0`` moves to ᾱ_0 as diffusers does."""
    a_t, a_p = ab[t], ab[prev] if prev >= 0 else ab[0]
    denom = a_t * math.sqrt(1.0 - a_p) + math.sqrt(a_t * (1.0 - a_t) * a_p)
    return math.sqrt(a_p / a_t), -(a_p - a_t) / denom


class _Rows:
    """Rows appended one model evaluation at a time."""

    def __init__(self) -> None:
        self.t: list[int] = []
        self.a: list[float] = []
        self.e0: list[float] = []
        self.hist: list[list[float]] = []
        self.writes: list[int] = []

    def add(self, t: int, a: float, e0: float, hist: dict[int, float] | None = None, write: int = PUSH) -> None:
        row = [0.0] * SLOTS
        for k, w in (hist or {}).items():
            row[k] = w
        self.t.append(t)
        self.a.append(a)
        self.e0.append(e0)
        self.hist.append(row)
        self.writes.append(write)

    def table(self) -> StepTable:
        R = len(self.t)

        zero = torch.zeros(R, dtype=torch.float64)
        return StepTable(self.t, f64(self.a), zero, zero.clone(), e0=f64(self.e0), hist=f64(self.hist),
                         writes=tuple(self.writes), history="eps")


def pndm_table(schedule: NoiseSchedule, levels: list[int], warmup: Literal["heun", "prk"]) -> StepTable:
    """PLMS (``warmup="heun"``) or PNDM (``"prk"``) over ``levels`` (descending model timesteps)."""
    ab = schedule.alpha_bars.tolist()
    K = len(levels)

    def prev(j: int) -> int:
        return levels[j + 1] if j + 1 < K else -1

    rows = _Rows()
    if warmup == "prk":
        if K < PNDM_MIN_LEVELS:
            raise ValueError(f"pndm needs at least {PNDM_MIN_LEVELS} steps, got {K}")
        for r in range(3):
            _runge_kutta(rows, ab, levels[r], levels[r + 1], slot=2 - r)
        known, first = 3, 3
    else:
        cx, ce = transfer(ab, levels[0], prev(0))
        rows.add(levels[0], cx, ce)
        known, first = 1, 1
        if K > 1:  # Heun: at the next level, average the two predictions and move from the first x again
            rows.add(levels[1], 1.0, ce / 2, {0: -ce / 2}, write=KEEP)
    for j in range(first, K):
        cx, ce = transfer(ab, levels[j], prev(j))
        w = ADAMS_BASHFORTH[min(known + 1, 4)]
        rows.add(levels[j], cx, ce * w[0], {k: ce * wk for k, wk in enumerate(w[1:])})
        known += 1
    return rows.table()


def _runge_kutta(rows: _Rows, ab: list[float], t: int, t_next: int, slot: int) -> None:
    """One pseudo Runge–Kutta step t → t_next in four evaluations, as diffusers' ``step_prk``: stages at t, the
    midpoint twice and t_next, combined 1/6, 1/3, 1/3, 1/6. ε of the first stage goes to ``slot`` (for the
    multistep that follows); the second and third stages use slots 3 and 4."""
    h = (t - t_next) // 2
    mid = t_next + h
    cx0, ce0 = transfer(ab, t, t - h)
    cx1, ce1 = transfer(ab, t, mid)
    cxf, cef = transfer(ab, t, t_next)
    rows.add(t, cx0, ce0, write=slot)
    rows.add(mid, cx1 / cx0, ce1, {slot: -cx1 / cx0 * ce0}, write=3)
    rows.add(mid, cxf / cx1, cef, {3: -cxf / cx1 * ce1}, write=4)
    rows.add(t_next, 1.0, cef / 6, {slot: cef / 6, 3: cef / 3, 4: cef / 3 - cef}, write=KEEP)
