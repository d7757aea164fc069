"""Analytic denoisers for data whose posterior E[x0 | x_t] is known in closed form: the exact model that
samplers, solvers and likelihoods are checked against (tests and benchmarks/solver_order.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion, v_from_x0_eps
from ..diffusion.schedule import extract


class GaussianOracle:
    """The exact predictor for data x0 ~ N(mu, std²) i.i.d. per dimension.

    With a = √ᾱ_t, b = √(1−ᾱ_t): E[x0 | x_t] = mu + a·std²/(a²·std² + b²)·(x_t − a·mu).
    std = 0 gives data at a single point x* = mu. Outputs the diffusion's prediction type.
    """

    def __init__(self, diffusion: GaussianDiffusion, mu: float | Tensor, std: float) -> None:
        self.d, self.mu, self.var = diffusion, mu, std**2

    def x0(self, x_t: Tensor, t: Tensor) -> Tensor:
        a = extract(self.d.schedule.sqrt_alpha_bars, t, x_t)
        b = extract(self.d.schedule.sqrt_one_minus_alpha_bars, t, x_t)
        mu = torch.as_tensor(self.mu, dtype=a.dtype, device=x_t.device)
        return mu + a * self.var / (a**2 * self.var + b**2) * (x_t - a * mu)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        x0 = self.x0(x_t, t)
        a = extract(self.d.schedule.sqrt_alpha_bars, t, x_t)
        b = extract(self.d.schedule.sqrt_one_minus_alpha_bars, t, x_t)
        eps = (x_t - a * x0) / b
        if self.d.prediction == "eps":
            return eps
        if self.d.prediction == "x0":
            return x0
        return v_from_x0_eps(x0, eps, a, b)
