"""Per-step coefficients of every fixed-step sampler, in the one linear multistep form

    x_next = a·x + b0·x̂0 + e0·ε̂ + Σ_k h_k·H_k + σ·z   (+ a Langevin move on corrector rows)

where x̂0 and ε̂ are the data and noise predictions of this model evaluation and H_k the sample's history
slots. DDPM and DDIM use neither ε̂ nor history; the DPM-Solver++ family (Lu et al. 2022) keeps its previous
data predictions; PLMS/PNDM (Liu et al. 2022, :mod:`.pndm`) its previous noise predictions; the score-SDE
samplers (:mod:`.score_sde`) step in ε̂. One row is one model evaluation; every table is float64 in execution
order (t descending), computed once per plan so that a step is only the update above.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..diffusion.gaussian import Variance
from ..diffusion.respace import respace
from ..diffusion.schedule import NoiseSchedule
from .pndm import pndm_table
from .score_sde import pc_table, sde_em_table
from .table import PUSH, StepTable

SamplerName = Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "plms", "pndm", "sde_em", "pc",
                      "ode_rk45"]
SAMPLERS: tuple[SamplerName, ...] = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "plms", "pndm",
                                     "sde_em", "pc", "ode_rk45")
SAMPLER_INFO: dict[SamplerName, str] = {
    "ddpm": "Ancestral DDPM (Ho et al. 2020, Algorithm 2), respaced to the chosen steps; stochastic.",
    "ddim": "DDIM (Song et al. 2021, eq. (12)); eta 0 is deterministic, eta 1 matches DDPM's noise.",
    "dpmpp_2m": "DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep ODE solver.",
    "dpmpp_3m": "DPM-Solver++(3M) (Lu et al. 2022): third-order multistep ODE solver.",
    "dpmpp_2m_sde": "SDE-DPM-Solver++(2M) (Lu et al. 2022): second-order multistep SDE solver; eta 0 is 2M.",
    "plms": "PLMS (Liu et al. 2022): fourth-order linear multistep on ε̂ with a Heun warm-up, as diffusers' "
            "PNDMScheduler(skip_prk_steps=True); steps + 1 evaluations.",
    "pndm": "PNDM (Liu et al. 2022): PLMS after three pseudo Runge–Kutta steps of 4 evaluations; steps + 9 "
            "evaluations.",
    "sde_em": "Euler–Maruyama on the reverse-time VP-SDE (Song et al. 2021, eq. (6)); stochastic.",
    "pc": "Predictor–corrector (Song et al. 2021, Algorithm 1): reverse-diffusion predictor plus Langevin "
          "corrector (snr, corrector_steps); steps × (1 + corrector_steps) evaluations.",
    "ode_rk45": "Probability-flow ODE (Song et al. 2021, eq. (13)) by adaptive Dormand–Prince RK4(5) (rtol, atol); "
                "it picks its own steps and reports its evaluations.",
}
#: η when a request gives none: DDIM is deterministic by default, the SDE solver stochastic.
DEFAULT_ETA: dict[SamplerName, float] = {"ddim": 0.0, "dpmpp_2m_sde": 1.0}
SOLVER_ORDER: dict[SamplerName, int] = {"dpmpp_2m": 2, "dpmpp_3m": 3, "dpmpp_2m_sde": 2}
#: Below this many steps the second-to-last multistep update also drops to order ≤ 2, as diffusers'
#: ``lower_order_final`` does: high orders are unstable on the last, widest λ-intervals of short plans.
LOWER_ORDER_BELOW = 15
#: The sampler that integrates with its own adaptive steps instead of a plan of rows.
ADAPTIVE: SamplerName = "ode_rk45"


def takes_eta(sampler: SamplerName) -> bool:
    return sampler in DEFAULT_ETA


def ends_at_zero(sampler: SamplerName) -> bool:
    """Whether the sampler's last model evaluation is at t = 0 (see :mod:`engine.sampling.spacing`)."""
    return sampler not in SOLVER_ORDER


def step_table(schedule: NoiseSchedule, sampler: SamplerName, timesteps: list[int], eta: float,
               variance: Variance, snr: float = 0.0, corrector_steps: int = 0) -> StepTable:
    """The rows for visiting the levels ``timesteps`` (descending) with ``sampler``; the last row lands on the
    sample it returns."""
    if sampler in ("ddpm", "ddim"):
        return _ancestral(schedule, sampler, timesteps, eta, variance)
    if sampler in ("plms", "pndm"):
        return pndm_table(schedule, timesteps, warmup="prk" if sampler == "pndm" else "heun")
    if sampler == "sde_em":
        return sde_em_table(schedule, timesteps)
    if sampler == "pc":
        return pc_table(schedule, timesteps, snr, corrector_steps)
    if sampler == ADAPTIVE:
        raise ValueError(f"{ADAPTIVE} chooses its own steps; it has no plan of rows")
    return _dpm_solver_pp(schedule, timesteps, SOLVER_ORDER[sampler], eta)


def _ancestral(schedule: NoiseSchedule, sampler: SamplerName, timesteps: list[int], eta: float,
               variance: Variance) -> StepTable:
    """DDPM's posterior q(x_{t'} | x_t, x̂0) on the respaced schedule (Ho et al. 2020, eq. (7)), or DDIM's
    non-Markovian update (Song et al. 2021, eq. (12)) with σ² = η²·β̃."""
    r = respace(schedule, sorted(timesteps), t_max=timesteps[0])
    s = r.schedule
    ab, ab_prev = s.alpha_bars, s.alpha_bars_prev
    if sampler == "ddpm":
        coef_x0, coef_xt = s.posterior_mean_coef_x0, s.posterior_mean_coef_xt
        var = (s.posterior_variance if variance == "fixed_small" else s.betas).clone()
    else:
        var = (eta**2) * s.posterior_variance
        coef_xt = (1.0 - ab_prev - var).clamp(min=0.0).sqrt() / s.one_minus_alpha_bars.sqrt()
        coef_x0 = ab_prev.sqrt() - coef_xt * ab.sqrt()
    var[0] = 0.0  # the last step returns the mean: no noise is added to the final image
    order = torch.arange(r.K - 1, -1, -1)
    return StepTable(timesteps, coef_xt[order], coef_x0[order], var.sqrt()[order])


def _dpm_solver_pp(schedule: NoiseSchedule, timesteps: list[int], order: int, eta: float) -> StepTable:
    """Multistep DPM-Solver++ in data-prediction form (Lu et al. 2022, Algorithm 2 and its order-3 analogue),
    with the SDE variant's η (η = 1 is SDE-DPM-Solver++, η = 0 the ODE solver).

    With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ) and h = λ_{i+1} − λ_i, the first-order update is
    x_{i+1} = (σ_{i+1}/σ_i)·e^{−ηh}·x_i + α_{i+1}·(1 − e^{−(1+η)h})·x̂0(i) + σ_{i+1}·√(1 − e^{−2ηh})·z;
    higher orders add divided differences of x̂0 (the "midpoint" form for order 2). The first steps
    warm up at lower order; the last step goes to σ = 0 and returns x̂0(K−1).
    """
    K = len(timesteps)
    ab = schedule.alpha_bars[torch.tensor(timesteps)]
    alpha, sigma_t = ab.sqrt().tolist(), (1.0 - ab).sqrt().tolist()
    lam = [math.log(a / s) for a, s in zip(alpha, sigma_t, strict=True)]
    table = {k: [0.0] * K for k in ("a", "b0", "b1", "b2", "sigma")}
    for i in range(K):
        if i == K - 1:  # to σ = 0: e^{−h} = 0, so x_{i+1} = x̂0(i)
            table["b0"][i] = 1.0
            continue
        h = lam[i + 1] - lam[i]
        q = min(order, i + 1)
        if K < LOWER_ORDER_BELOW and i == K - 2:
            q = min(q, 2)
        phi = alpha[i + 1] * -math.expm1(-(1.0 + eta) * h)
        table["a"][i] = sigma_t[i + 1] / sigma_t[i] * math.exp(-eta * h)
        table["sigma"][i] = sigma_t[i + 1] * math.sqrt(-math.expm1(-2.0 * eta * h))
        if q == 1:
            b = (phi, 0.0, 0.0)
        elif q == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            b = (phi * (1.0 + 0.5 / r0), -phi * 0.5 / r0, 0.0)
        else:
            b = _third_order(alpha[i + 1], h, (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h)
        table["b0"][i], table["b1"][i], table["b2"][i] = b
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in table.items()}
    return StepTable(timesteps, t["a"], t["b0"], t["sigma"], hist=torch.stack([t["b1"], t["b2"]], dim=1),
                     writes=(PUSH,) * K, history="x0")


def _third_order(alpha_next: float, h: float, r0: float, r1: float) -> tuple[float, float, float]:
    """Weights on (x̂0(i), x̂0(i−1), x̂0(i−2)) of the order-3 DPM-Solver++ update (ODE form).

    D1 and D2 are the first and second divided differences of x̂0 in λ, scaled by h (Lu et al. 2022, §3.3):
    x_{i+1} = (σ_{i+1}/σ_i)·x_i + α(1 − e^{−h})·D0 + α((e^{−h} − 1)/h + 1)·D1 − α((e^{−h} − 1 + h)/h² − ½)·D2.
    """
    em1 = math.expm1(-h)
    c0, c1, c2 = -alpha_next * em1, alpha_next * (em1 / h + 1.0), -alpha_next * ((em1 + h) / h**2 - 0.5)
    d1_0 = (1.0 / r0, -1.0 / r0, 0.0)
    d1_1 = (0.0, 1.0 / r1, -1.0 / r1)
    diff = tuple(u - v for u, v in zip(d1_0, d1_1, strict=True))
    d1 = tuple(u + r0 / (r0 + r1) * d for u, d in zip(d1_0, diff, strict=True))
    d2 = tuple(2.0 * d / (r0 + r1) for d in diff)
    return (c0 + c1 * d1[0] + c2 * d2[0], c1 * d1[1] + c2 * d2[1], c1 * d1[2] + c2 * d2[2])
