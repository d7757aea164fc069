"""Empirical convergence order of the ODE solvers against an exact oracle, ours beside diffusers' stock 3M.

Data N(0.3, 0.5²) per dimension has a closed-form denoiser and probability-flow ODE, so the error of a
solver's state after half of a logSNR-spaced plan is known exactly. diffusers' multistep scheduler is
run on the same timesteps (``set_timesteps(timesteps=...)``) with the same noise levels.

    python benchmarks/solver_order.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine import GaussianDiffusion, NoiseSchedule, SamplingPlan, sampling_step
from engine.models.oracle import GaussianOracle

MU, STD, STEPS = 0.3, 0.5, (8, 16, 32, 64)


def exact_state(d: GaussianDiffusion, x_T: torch.Tensor, t0: int, t: int) -> torch.Tensor:
    ab = d.schedule.alpha_bars
    z = (x_T - ab[t0].sqrt() * MU) / (ab[t0] * STD**2 + 1 - ab[t0]).sqrt()
    return ab[t].sqrt() * MU + z * (ab[t] * STD**2 + 1 - ab[t]).sqrt()


def ours(d, oracle, sampler, steps, x_T):
    plan = SamplingPlan.build(d, sampler, steps, spacing="logsnr")
    x, hist = x_T.clone(), (torch.zeros_like(x_T), torch.zeros_like(x_T))
    for i in range(steps // 2):
        c = plan.coeffs(i, x.shape[0], "cpu", clip=False, dtype=torch.float64)
        x, x0, _ = sampling_step("eps", oracle(x, c.t), x, c, torch.zeros_like(x), history=hist)
        hist = (x0, hist[0])
    return plan, x


def stock_diffusers_3m(d, oracle, plan, steps, x_T):
    import diffusers

    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=d.T, trained_betas=d.schedule.betas.numpy(),
                                                  solver_order=3, algorithm_type="dpmsolver++",
                                                  final_sigmas_type="zero", thresholding=False)
    sched.set_timesteps(timesteps=plan.timesteps.tolist())
    ab = d.schedule.alpha_bars[plan.timesteps]
    sched.sigmas = torch.cat([((1 - ab) / ab).sqrt(), ab.new_zeros(1)])
    x = x_T.clone()
    for t in plan.timesteps[: steps // 2]:
        x = sched.step(oracle(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


def main() -> None:
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    oracle = GaussianOracle(d, MU, STD)
    x_T = torch.randn(256, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = {"dpmpp_2m": [], "dpmpp_3m": [], "diffusers 3M (stock)": []}
    for k in STEPS:
        for name in ("dpmpp_2m", "dpmpp_3m"):
            plan, x = ours(d, oracle, name, k, x_T)
            rows[name].append(float((x - exact_state(d, x_T, 999, int(plan.timesteps[k // 2]))).abs().max()))
        x = stock_diffusers_3m(d, oracle, plan, k, x_T)
        rows["diffusers 3M (stock)"].append(float((x - exact_state(d, x_T, 999, int(plan.timesteps[k // 2])))
                                                  .abs().max()))
    print("| solver | " + " | ".join(f"error, {k} steps" for k in STEPS) + " | order (16→64) |")
    print("|---|" + "---|" * (len(STEPS) + 1))
    for name, err in rows.items():
        order = -(math.log(err[-1]) - math.log(err[1])) / (math.log(STEPS[-1]) - math.log(STEPS[1]))
        print(f"| {name} | " + " | ".join(f"{e:.2e}" for e in err) + f" | {order:.2f} |")


if __name__ == "__main__":
    main()
