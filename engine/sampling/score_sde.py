"""The score-SDE samplers (Song et al. 2021) as rows of the one update, reading the trained DDPM as the VP-SDE
it discretises (:mod:`engine.diffusion.sde`), with score s(x, t) = −ε̂/σ_t. Both step in ε̂; σ_t is the
discrete schedule's √(1 − ᾱ_t) at the row's model timestep, the noise level the network was trained at.

* ``sde_em``: Euler–Maruyama on the reverse SDE dx = [−½β(t)x − β(t)s(x, t)]dt + √β(t) dw̄ (eq. (6)), from
  t_i = (i + 1)/N to the next level's time (0 after the last), so x' = (1 + ½βΔ)·x − βΔ/σ·ε̂ + √(βΔ)·z.
* ``pc``: Algorithm 1's loop. At every level, ``corrector_steps`` Langevin moves x' = x + δ·s + √(2δ)·z with
  δ = 2α(snr·‖z‖/‖s‖)² per sample (Algorithm 5; the step function computes the norms), then the
  reverse-diffusion predictor x' = (2 − √(1 − β))·x − β/σ·ε̂ + √β·z (Algorithm 3 with the VP discretisation),
  with β, α = 1 − β of the level's interval in the respaced schedule.

The last row adds no noise, as score_sde's ``noise_removal``/``denoise`` do.
"""

from __future__ import annotations

import torch

from ..diffusion.respace import respace
from ..diffusion.schedule import NoiseSchedule
from ..diffusion.sde import VPSDE
from .table import StepTable, f64

#: Langevin corrector defaults (score_sde's VP configs: snr 0.16, one corrector step per level).
DEFAULT_SNR = 0.16
DEFAULT_CORRECTOR_STEPS = 1


def sde_em_table(schedule: NoiseSchedule, levels: list[int]) -> StepTable:
    sde = VPSDE.of(schedule)
    ts = sde.time_of(torch.tensor(levels)).clamp(max=sde.t_max)  # the cosine schedule's β(t) is infinite at t = 1
    dt = ts - torch.cat([ts[1:], ts.new_zeros(1)])
    beta = sde.beta(ts)
    sigma_t = schedule.sqrt_one_minus_alpha_bars[torch.tensor(levels)]
    noise = (beta * dt).sqrt()
    noise[-1] = 0.0
    zero = torch.zeros(len(levels), dtype=torch.float64)
    return StepTable(levels, 1.0 + 0.5 * beta * dt, zero, noise, e0=-beta * dt / sigma_t)


def pc_table(schedule: NoiseSchedule, levels: list[int], snr: float, corrector_steps: int) -> StepTable:
    VPSDE.of(schedule)  # the same schedules as the other score-SDE samplers
    r = respace(schedule, sorted(levels), t_max=levels[0])
    beta = r.schedule.betas.flip(0)  # execution order: β of the interval that leaves each level
    sigma_t = schedule.sqrt_one_minus_alpha_bars[torch.tensor(levels)]
    t, a, e0, noise, langevin = [], [], [], [], []
    for j, level in enumerate(levels):
        b, s = float(beta[j]), float(sigma_t[j])
        for _ in range(corrector_steps):
            t.append(level)
            a.append(1.0)
            e0.append(0.0)
            noise.append(0.0)
            langevin.append(2.0 * (1.0 - b) * snr**2)
        t.append(level)
        a.append(2.0 - (1.0 - b) ** 0.5)
        e0.append(-b / s)
        noise.append(b**0.5 if j < len(levels) - 1 else 0.0)
        langevin.append(0.0)

    return StepTable(t, f64(a), torch.zeros(len(t), dtype=torch.float64), f64(noise), e0=f64(e0),
                     langevin=f64(langevin))
