"""Gaussian diffusion math: the forward process, its posterior and the three parameterizations.

Shapes: images are ``(B, C, H, W)`` (any ``(B, …)`` works); ``t`` is a LongTensor ``(B,)`` of
0-based indices. Coefficients named ``sa``/``s1`` below are √ᾱ_t and √(1−ᾱ_t), already shaped to
broadcast against the images, so the same conversion code serves training (indexed by ``t``) and
the sampler (per-sample rows of a plan): there is one copy of the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .schedule import NoiseSchedule, extract

Prediction = Literal["eps", "x0", "v"]
Variance = Literal["fixed_small", "fixed_large"]
PREDICTIONS: tuple[Prediction, ...] = ("eps", "x0", "v")
VARIANCES: tuple[Variance, ...] = ("fixed_small", "fixed_large")


# ----------------------------------------------------------------------------- conversions
def x0_from_eps(x_t: Tensor, eps: Tensor, sa: Tensor, s1: Tensor) -> Tensor:
    """x0 = (x_t − √(1−ᾱ)·ε) / √ᾱ."""
    return (x_t - s1 * eps) / sa


def eps_from_x0(x_t: Tensor, x0: Tensor, sa: Tensor, s1: Tensor) -> Tensor:
    """ε = (x_t − √ᾱ·x0) / √(1−ᾱ)."""
    return (x_t - sa * x0) / s1


def v_from_x0_eps(x0: Tensor, eps: Tensor, sa: Tensor, s1: Tensor) -> Tensor:
    """v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho 2022); other forms in circulation do not invert
    with :func:`x0_from_v` and :func:`eps_from_v` (docs/ERRATA.md, E3)."""
    return sa * eps - s1 * x0


def x0_from_v(x_t: Tensor, v: Tensor, sa: Tensor, s1: Tensor) -> Tensor:
    """x0 = √ᾱ·x_t − √(1−ᾱ)·v."""
    return sa * x_t - s1 * v


def eps_from_v(x_t: Tensor, v: Tensor, sa: Tensor, s1: Tensor) -> Tensor:
    """ε = √(1−ᾱ)·x_t + √ᾱ·v."""
    return s1 * x_t + sa * v


def split_prediction(
    prediction: Prediction,
    model_output: Tensor,
    x_t: Tensor,
    sa: Tensor,
    s1: Tensor,
    clip: Tensor | bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """Turn a model output into ``(x̂0, ε̂)``, both ``x_t``-shaped.

    ``clip`` (a bool, or a bool tensor ``(B,)`` for per-sample choice) clamps x̂0 to
    ``clip_range``; ε̂ is then re-derived from the clipped x̂0 so that both stay consistent
    with x_t (this is what makes DDIM and DDPM agree under clipping).
    """
    if prediction == "eps":
        x0 = x0_from_eps(x_t, model_output, sa, s1)
    elif prediction == "x0":
        x0 = model_output
    elif prediction == "v":
        x0 = x0_from_v(x_t, model_output, sa, s1)
    else:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if isinstance(clip, Tensor):
        mask = clip.to(x0.device).reshape(-1, *([1] * (x0.ndim - 1)))
        x0 = torch.where(mask, x0.clamp(*clip_range), x0)
    elif clip:
        x0 = x0.clamp(*clip_range)
    else:
        if prediction == "eps":
            return x0, model_output
        if prediction == "v":
            return x0, eps_from_v(x_t, model_output, sa, s1)
    return x0, eps_from_x0(x_t, x0, sa, s1)


@dataclass(frozen=True)
class PosteriorParams:
    """Mean and variance of a Gaussian over x_{t−1}; ``x0`` is the x̂0 the mean was built from."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    x0: Tensor


class GaussianDiffusion:
    """The DDPM forward process q and the model's reverse process p for one schedule.

    Args:
        schedule: the :class:`NoiseSchedule`.
        prediction: what the network outputs: ``"eps"`` (ε), ``"x0"`` or ``"v"``.
        variance: reverse variance, ``"fixed_small"`` (β̃_t) or ``"fixed_large"`` (β_t).
        clip_range: the data range x̂0 is clipped to when clipping is asked for.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: Prediction = "eps",
        variance: Variance = "fixed_small",
        clip_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.schedule = schedule
        self.prediction: Prediction = prediction
        self.variance: Variance = variance
        self.clip_range = clip_range
        s = schedule
        if variance == "fixed_small":
            self._model_var = s.posterior_variance
            self._model_log_var = s.posterior_log_variance_clipped
        else:
            # β at t ≥ 1; β̃_1 at t = 0 (improved-diffusion's choice): using β_0 there would
            # inflate the decoder's variance, and log β̃_0 = log 0 is −inf.
            self._model_var = torch.cat([s.posterior_variance[1:2], s.betas[1:]])
            self._model_log_var = torch.log(self._model_var)

    @property
    def T(self) -> int:
        return self.schedule.T

    def _c(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        return extract(getattr(self.schedule, name), t, like)

    def _sa_s1(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        return self._c("sqrt_alpha_bars", t, like), self._c("sqrt_one_minus_alpha_bars", t, like)

    # ------------------------------------------------------------------------- forward q
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean √ᾱ_t·x0 and variance (1−ᾱ_t) of q(x_t | x0); variance is ``(B, 1, …)``."""
        sa, s1 = self._sa_s1(t, x0)
        return sa * x0, s1**2

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Draw x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε. ``noise`` defaults to fresh N(0, I)."""
        if noise is None:
            noise = torch.randn_like(x0)
        sa, s1 = self._sa_s1(t, x0)
        return sa * x0 + s1 * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t−1} | x_t, x0); the variance β̃_t is ``(B, 1, …)``."""
        mean = self._c("posterior_mean_coef_x0", t, x_t) * x0 + self._c(
            "posterior_mean_coef_xt", t, x_t
        ) * x_t
        return mean, self._c("posterior_variance", t, x_t)

    # ------------------------------------------------------------------------- parameterizations
    def predict_x0_eps(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``(x̂0, ε̂)`` from a model output of this diffusion's prediction type."""
        sa, s1 = self._sa_s1(t, x_t)
        return split_prediction(self.prediction, model_output, x_t, sa, s1, clip, self.clip_range)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target for L_simple: ε, x0 or v."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        sa, s1 = self._sa_s1(t, x0)
        return v_from_x0_eps(x0, noise, sa, s1)

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip: bool = False
    ) -> PosteriorParams:
        """p_θ(x_{t−1} | x_t): the posterior mean at x̂0 with the fixed model variance."""
        x0, _ = self.predict_x0_eps(model_output, x_t, t, clip)
        mean, _ = self.q_posterior(x0, x_t, t)
        return PosteriorParams(
            mean=mean,
            variance=extract(self._model_var, t, x_t),
            log_variance=extract(self._model_log_var, t, x_t),
            x0=x0,
        )
