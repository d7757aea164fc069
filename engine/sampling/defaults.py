"""What a request that names no sampler, steps or spacing gets: chosen by measurement on the bundled models.

``benchmarks/sweep_samplers.py`` scores sampler × spacing × steps (× guidance) with the digit classifier.
The default is the cheapest configuration whose confident share is within 0.02 of respaced DDPM 100 while
class entropy, FLD and near-copies still pass. On the unconditional model no configuration of 25 steps or
fewer does (BENCHMARKS.md §7), so respaced DDPM 100 is the default there. Under classifier-free guidance
(the class-conditional model, s = 2) DPM-Solver++(2M) with 8 steps does (§8). Each sampler keeps its own
best spacing (``linspace`` for all of them) and a step count, used when a request names the sampler but
not the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from .solvers import ADAPTIVE, SAMPLERS, SamplerName
from .spacing import Spacing


@dataclass(frozen=True)
class SamplingChoice:
    """A sampler with its step count and spacing."""

    sampler: SamplerName
    steps: int | None  # None for the adaptive sampler, which picks its own
    spacing: Spacing | None


#: The default sampler of an unconditional model.
DEFAULT_SAMPLER: SamplerName = "ddpm"
#: The default sampler of a class-conditional model, whose requests are guided by default.
GUIDED_DEFAULT_SAMPLER: SamplerName = "dpmpp_2m"
#: The guidance scale of a class-conditional model's request that gives none, applied within the default interval.
DEFAULT_GUIDANCE = 3.0
#: Where guidance applies when a request gives no interval, as shares of the model's last timestep T − 1: the lower
#: 55 %, t ≤ 549 of 1000. Guidance at the noisiest steps buys little accuracy and costs most of the diversity
#: (Kynkäänniemi et al. 2024); the sweep in BENCHMARKS.md §8d chose s = 3 within it over s = 2 at every step.
DEFAULT_GUIDANCE_INTERVAL = (0.0, 0.55)


def default_guidance_interval(T: int) -> tuple[int, int]:
    """:data:`DEFAULT_GUIDANCE_INTERVAL` in the timesteps of a model of ``T`` steps."""
    lo, hi = DEFAULT_GUIDANCE_INTERVAL
    return round(lo * (T - 1)), round(hi * (T - 1))
#: Steps and spacing per sampler when only the sampler is given.
PER_SAMPLER: dict[SamplerName, tuple[int, Spacing]] = {
    "ddpm": (100, "linspace"),
    "ddim": (50, "linspace"),
    "dpmpp_2m": (20, "linspace"),
    "dpmpp_3m": (20, "linspace"),
    "dpmpp_2m_sde": (20, "linspace"),
    "plms": (20, "linspace"),
    "pndm": (20, "linspace"),
    # Euler–Maruyama is first order in a stochastic equation: it needs many levels (score_sde runs 1000).
    "sde_em": (250, "linspace"),
    "pc": (100, "linspace"),
}
assert set(PER_SAMPLER) == set(SAMPLERS) - {ADAPTIVE}
#: Where guidance lets a sampler take fewer steps for the same quality (class-conditional models).
GUIDED_STEPS: dict[SamplerName, int] = {"dpmpp_2m": 8}


def choose(sampler: SamplerName | None = None, steps: int | None = None, spacing: Spacing | None = None,
           default_sampler: SamplerName | None = None, conditional: bool = False) -> SamplingChoice:
    """The table lookup behind :func:`engine.sampling.spec.complete`: the sampler from ``default_sampler``
    (else the model kind's default), the rest from that sampler's entry (a class-conditional model's, where
    guidance changes it)."""
    sampler = sampler or default_sampler or (GUIDED_DEFAULT_SAMPLER if conditional else DEFAULT_SAMPLER)
    if sampler == ADAPTIVE:
        return SamplingChoice(sampler, None, None)
    k, sp = PER_SAMPLER[sampler]
    if conditional:
        k = GUIDED_STEPS.get(sampler, k)
    return SamplingChoice(sampler, k if steps is None else steps, sp if spacing is None else spacing)
