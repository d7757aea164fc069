"""The one reverse step every sampler, offline or batched in the server, goes through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..diffusion.gaussian import Prediction, split_prediction
from .plan import StepCoeffs

#: Each sample's history slots, each ``(B, C, H, W)``: previous x̂0 (DPM-Solver++) or ε̂ (PLMS/PNDM).
History = Sequence[Tensor]


class StepResult(NamedTuple):
    """One step's output, each ``(B, C, H, W)``: the next state and this evaluation's two predictions."""

    x_prev: Tensor
    x0: Tensor
    eps: Tensor


def sampling_step(
    prediction: Prediction,
    model_output: Tensor,
    x_t: Tensor,
    c: StepCoeffs,
    noise: Tensor,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    history: History | None = None,
) -> StepResult:
    """One reverse step for a batch whose samples may sit at different steps of different plans.

        x̂0, ε̂ = split(model_output) (x̂0 clipped where ``c.clip``, ε̂ consistent with it)
        x_prev = b0·x̂0 + a·x_t + σ·z + e0·ε̂ + Σ_k h_k·H_k
        x_prev += δ·s + √(2δ)·z on Langevin rows, s = −ε̂/σ_t, δ = langevin·(‖z‖/‖s‖)² per sample
                 (Song et al. 2021, Algorithm 5: the step size follows each sample's own noise and score norms)

    Args:
        prediction: the model's output type.
        model_output, x_t, noise: ``(B, C, H, W)``.
        c: per-sample coefficients, each ``(B,)`` (``coef_hist`` ``(B, S)``).
        history: the samples' S history slots; needed when any row has a history weight ≠ 0
            (rows of other samplers may hold anything there, e.g. zeros).
    Returns:
        ``(x_prev, x0_hat, eps_hat)``, each ``(B, C, H, W)`` in float32 (or x_t's dtype if float64).
    """
    dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
    shape = (-1,) + (1,) * (x_t.ndim - 1)

    def b(v: Tensor) -> Tensor:
        return v.to(dtype).reshape(shape)

    x_t = x_t.to(dtype)
    x0, eps = split_prediction(prediction, model_output.to(dtype), x_t, b(c.sqrt_alpha_bar),
                               b(c.sqrt_one_minus_alpha_bar), c.clip, clip_range)
    noise = noise.to(dtype)
    x_prev = b(c.coef_x0) * x0 + b(c.coef_xt) * x_t + b(c.sigma) * noise
    if c.uses_eps:
        x_prev = x_prev + b(c.coef_eps) * eps
    if history is not None:
        if len(history) < c.coef_hist.shape[1]:
            raise ValueError(f"the update weighs {c.coef_hist.shape[1]} history slots; {len(history)} were given")
        for k, h in enumerate(history[: c.coef_hist.shape[1]]):
            x_prev = x_prev + b(c.coef_hist[:, k]) * h.to(dtype)
    elif bool((c.coef_hist != 0).any()):
        raise ValueError("a multistep update needs the previous predictions (history)")
    if c.uses_langevin:
        score = -eps / b(c.sqrt_one_minus_alpha_bar)
        ratio = noise.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
        delta = b(c.langevin.to(dtype) * ratio**2)
        x_prev = x_prev + delta * score + (2.0 * delta).sqrt() * noise
    return StepResult(x_prev, x0, eps)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """N(0, I) of ``shape`` from ``generator`` (on its own device), moved to ``device``.

    All samplers, offline and server, draw x_T and then one noise tensor per step through this,
    deterministic ones included, so a seed gives the same images however jobs are batched.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gdev).to(device)
