"""K-step subsequences of a T-step schedule (Nichol & Dhariwal 2021, §4: sample along a subsequence of t).

A respaced schedule keeps ᾱ exactly at the kept steps k_1 < … < k_K and defines
β'_i = 1 − ᾱ[k_i] / ᾱ[k_{i−1}] (with ᾱ[k_0] := 1), so that ∏(1 − β'_i) reproduces ᾱ[k_i].
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .schedule import NoiseSchedule

TimestepSpec = int | str | Sequence[int]


@dataclass(frozen=True)
class RespacedSchedule:
    """A schedule over K kept steps plus the map back to the original indices.

    Attributes:
        schedule: the K-step :class:`NoiseSchedule` (its ᾱ equals the original ᾱ at ``timesteps``).
        timesteps: LongTensor ``(K,)``, ascending original indices; the model is fed these.
    """

    schedule: NoiseSchedule
    timesteps: Tensor

    @property
    def K(self) -> int:
        return int(self.timesteps.numel())


def select_timesteps(T: int, spec: TimestepSpec, t_max: int | None = None) -> list[int]:
    """Pick the ascending kept indices within ``[0, t_max]`` (``t_max`` defaults to T − 1).

    ``spec`` is one of:
      * an int K: K indices spread evenly over ``[0, t_max]``, both ends included;
      * ``"ddimK"``: DDIM's uniform stride ``range(0, t_max + 1, (t_max + 1) // K)``;
      * a string of digits, the same as the int;
      * an explicit sequence of indices.
    """
    t_max = T - 1 if t_max is None else int(t_max)
    if not 0 <= t_max < T:
        raise ValueError(f"t_max must lie in [0, {T - 1}], got {t_max}")
    n = t_max + 1
    if isinstance(spec, str):
        m = re.fullmatch(r"ddim(\d+)", spec.strip())
        if m:
            k = int(m.group(1))
            if not 1 <= k <= n:
                raise ValueError(f"ddim step count must lie in [1, {n}], got {k}")
            return list(range(0, n, n // k))[:k]
        if spec.strip().isdigit():
            spec = int(spec)
        else:
            raise ValueError(f"timestep spec must be an int, 'ddimK' or a list, got {spec!r}")
    if isinstance(spec, int):
        if not 1 <= spec <= n:
            raise ValueError(f"steps must lie in [1, {n}], got {spec}")
        if spec == 1:
            return [t_max]
        idx = torch.linspace(0, t_max, spec, dtype=torch.float64).round().long().tolist()
        if len(set(idx)) != spec:  # cannot happen for spec ≤ n, but never return a short list
            raise AssertionError("evenly spaced timesteps collided")
        return idx
    idx = sorted({int(i) for i in spec})
    if not idx:
        raise ValueError("explicit timestep list is empty")
    if idx[0] < 0 or idx[-1] > t_max:
        raise ValueError(f"explicit timesteps must lie in [0, {t_max}]")
    return idx


def respace(schedule: NoiseSchedule, spec: TimestepSpec, t_max: int | None = None) -> RespacedSchedule:
    """Derive the K-step schedule that keeps ``schedule``'s ᾱ at the selected indices."""
    kept = select_timesteps(schedule.T, spec, t_max)
    ts = torch.tensor(kept, dtype=torch.long)
    if kept == list(range(schedule.T)):
        return RespacedSchedule(schedule, ts)
    ab = schedule.alpha_bars[ts]
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    return RespacedSchedule(NoiseSchedule(1.0 - ab / ab_prev), ts)
