"""Which K model timesteps a sampler visits: the spacings of diffusers' schedulers, plus logSNR and Karras.

Samplers differ in where their last evaluation sits. DDPM and DDIM end with a step at t = 0
(``DDPMScheduler``/``DDIMScheduler``: K levels from t_max down to 0). The DPM-Solver++ family spends
no evaluation there (``DPMSolverMultistepScheduler``): it lays out K + 1 levels ending at 0 and
replaces that last one by σ = 0, so its final step jumps to the clean image. ``select`` takes that
choice as ``ends_at_zero`` and returns the K model timesteps, descending.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..diffusion.schedule import NoiseSchedule

Spacing = Literal["linspace", "leading", "trailing", "logsnr", "karras"]
SPACINGS: tuple[Spacing, ...] = ("linspace", "leading", "trailing", "logsnr", "karras")
DEFAULT_SPACING: Spacing = "linspace"
KARRAS_RHO = 7.0


def max_steps(t_max: int, ends_at_zero: bool) -> int:
    """The most steps a plan can take from ``t_max``: every level once (one fewer when t = 0 is not visited)."""
    return t_max + 1 if ends_at_zero or t_max == 0 else t_max


def select(schedule: NoiseSchedule, steps: int, spacing: Spacing, t_max: int, ends_at_zero: bool) -> list[int]:
    """``steps`` distinct timesteps in ``[0, t_max]``, descending, laid out by ``spacing``.

    * ``linspace``: evenly spaced from t_max to 0, rounded (diffusers' default);
    * ``leading``: multiples of ⌊(t_max + 1)/n⌋ from 0 (diffusers' ``leading``, DDIM's original stride);
    * ``trailing``: t_max, t_max − (t_max + 1)/K, … (Lin et al. 2024, Table 2), never 0 unless K = t_max + 1;
    * ``logsnr``: uniform in λ = log(α/σ) (the variable DPM-Solver integrates in, Lu et al. 2022);
    * ``karras``: σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ with ρ = 7 and σ = √((1−ᾱ)/ᾱ)
      (Karras et al. 2022, eq. (5)).

    Here n = K when ``ends_at_zero`` and K + 1 otherwise (the last level is then dropped).
    """
    limit = max_steps(t_max, ends_at_zero)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not 1 <= steps <= limit:
        raise ValueError(f"steps must lie in [1, {limit}] from t = {t_max}, got {steps}")
    n = steps if ends_at_zero else steps + 1
    if t_max == 0 or n == 1:  # a single step starts where the noise is
        return [t_max]
    if spacing == "trailing":
        ratio = (t_max + 1) / steps
        return [round((t_max + 1) - i * ratio) - 1 for i in range(steps)]
    if spacing == "linspace":
        levels = torch.linspace(0, t_max, n, dtype=torch.float64).round().long().tolist()[::-1]
    elif spacing == "leading":
        ratio = (t_max + 1) // n
        levels = [i * ratio for i in range(n)][::-1]
    else:
        levels = _by_noise_level(schedule, n, spacing, t_max)
    return levels[:steps]


def _by_noise_level(schedule: NoiseSchedule, n: int, spacing: Spacing, t_max: int) -> list[int]:
    """n levels spaced in λ (``logsnr``) or σ^{1/ρ} (``karras``) from t_max to 0, mapped to the nearest t."""
    lam = half_log_snr(schedule)[: t_max + 1]  # decreasing in t
    if spacing == "logsnr":
        targets = torch.linspace(float(lam[t_max]), float(lam[0]), n, dtype=torch.float64)
    else:
        sigma = torch.exp(-lam)  # √((1−ᾱ)/ᾱ) = σ/α
        hi, lo = float(sigma[t_max]) ** (1 / KARRAS_RHO), float(sigma[0]) ** (1 / KARRAS_RHO)
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        targets = -torch.log((hi + ramp * (lo - hi)) ** KARRAS_RHO)
    return _distinct_descending(_nearest_t(lam, targets), t_max)


def half_log_snr(schedule: NoiseSchedule) -> Tensor:
    """λ_t = log(α_t/σ_t) = ½·log(ᾱ_t/(1−ᾱ_t)), float64 ``(T,)``."""
    return 0.5 * (torch.log(schedule.alpha_bars) - torch.log(schedule.one_minus_alpha_bars))


def _nearest_t(lam: Tensor, targets: Tensor) -> list[int]:
    """For each target λ, the t whose λ_t is closest (λ_t decreases in t)."""
    return [int(torch.argmin((lam - v).abs())) for v in targets.tolist()]


def _distinct_descending(ts: list[int], t_max: int) -> list[int]:
    """Nudge rounded levels apart so that they strictly descend from t_max to 0 (dense λ grids near t = 0 collide)."""
    out = list(ts)
    out[-1] = 0
    for i in range(len(out) - 2, -1, -1):
        out[i] = max(out[i], out[i + 1] + 1)
    out[0] = t_max
    for i in range(1, len(out)):
        out[i] = min(out[i], out[i - 1] - 1)
    if out[-1] < 0:
        raise ValueError(f"{len(ts)} levels do not fit in [0, {t_max}]")
    return out
