"""The continuous VP-SDE that a discrete DDPM schedule discretises (Song et al. 2021, "Score-based generative
modeling through SDEs", eq. (11)): dx = −½β(t)·x dt + √β(t) dw for t ∈ [0, 1], with marginals
q(x_t | x_0) = N(α(t)·x_0, σ(t)²·I), α(t)² = ᾱ(t), σ(t)² = 1 − ᾱ(t).

* **linear**: β(t) = β_min + t·(β_max − β_min) with β_min = N·β_1, β_max = N·β_N, so linspace(1e-4, 0.02, 1000)
  is Song et al.'s VPSDE(β_min = 0.1, β_max = 20, N = 1000), whose discrete betas β_min/N + i(β_max − β_min)/(N(N−1))
  are exactly that linspace; log ᾱ(t) = −½t²(β_max − β_min) − t·β_min.
* **cosine**: ᾱ(t) = f(t)/f(0) with f(t) = cos²((t + s)/(1 + s)·π/2) (Nichol & Dhariwal 2021, eq. (17)), so
  β(t) = −d log ᾱ/dt = π/(1 + s)·tan((t + s)/(1 + s)·π/2).

**Time map** (DPM-Solver's discrete ``NoiseScheduleVP``): model time t ∈ [1/N, 1] is the network's timestep
N·t − 1, so discrete index i sits at t_i = (i + 1)/N. For the cosine schedule ᾱ(t_i) is then the discrete ᾱ_i
to rounding; for the linear one within 7 % in ᾱ (4.9 % in σ at i = 0): the SDE's continuous β(t) against the
discrete product ∏(1 − β_j). score_sde's own map, i = t·(N − 1), puts t = 1/N at σ(t) twice the discrete σ_0.

The score of the trained model is s(x, t) = −ε̂(x, t)/σ(t), with guidance applied to ε̂ first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .schedule import NoiseSchedule

SDEKind = Literal["linear", "cosine"]


@dataclass(frozen=True)
class VPSDE:
    """β(t), ᾱ(t), α(t), σ(t) of the VP-SDE of an N-step linear or cosine schedule; t is a float or a tensor."""

    kind: SDEKind
    N: int
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008

    @classmethod
    def of(cls, schedule: NoiseSchedule) -> VPSDE:
        """The SDE whose discretisation ``schedule`` is; ValueError for a schedule that is neither kind."""
        N, b = schedule.T, schedule.betas
        linear = NoiseSchedule.linear(N, float(b[0]), float(b[-1])).betas
        if torch.allclose(b, linear, rtol=1e-9, atol=0.0):
            return cls("linear", N, beta_min=float(b[0]) * N, beta_max=float(b[-1]) * N)
        if torch.allclose(b, NoiseSchedule.cosine(N).betas, rtol=1e-9, atol=0.0):
            return cls("cosine", N)
        raise ValueError("the score-SDE view needs a linear schedule or the cosine one with s = 0.008")

    @property
    def t_min(self) -> float:
        """The smallest model time, the network's timestep 0."""
        return 1.0 / self.N

    @property
    def t_max(self) -> float:
        """Where an ODE integration ends: 1, or 0.9946 for the cosine schedule, whose β(t) → ∞ as t → 1 (the
        end DPM-Solver's ``NoiseScheduleVP`` uses; α(0.9946) ≈ 0.008, so x there is N(0, I) to that)."""
        return 0.9946 if self.kind == "cosine" else 1.0

    def model_timestep(self, t: Tensor) -> Tensor:
        """The network's (fractional) timestep N·t − 1 at model time ``t``."""
        return t * self.N - 1.0

    def time_of(self, timestep: Tensor | int) -> Tensor:
        """Model time (i + 1)/N of discrete index ``timestep`` (float64)."""
        return (torch.as_tensor(timestep, dtype=torch.float64) + 1.0) / self.N

    def beta(self, t: Tensor) -> Tensor:
        if self.kind == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        s = self.cosine_s
        return math.pi / (1.0 + s) * torch.tan((t + s) / (1.0 + s) * math.pi / 2.0)

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        if self.kind == "linear":
            return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min
        s = self.cosine_s

        def log_f(u: Tensor | float) -> Tensor:
            return 2.0 * torch.log(torch.cos(torch.as_tensor((u + s) / (1.0 + s) * math.pi / 2.0)))

        return log_f(t) - log_f(torch.zeros_like(torch.as_tensor(t)))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def ode_drift(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The probability-flow ODE's dx/dt = f − ½g²·score = −½β(t)·(x − ε̂/σ(t)) (Song et al. eq. (13)).
        ``x``, ``eps``: ``(B, …)``; ``t``: ``(B,)`` or a scalar tensor."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        beta, sigma = self.beta(t).to(x.dtype), self.sigma(t).to(x.dtype)
        if beta.ndim:
            beta, sigma = beta.reshape(shape), sigma.reshape(shape)
        return -0.5 * beta * (x - eps / sigma)
