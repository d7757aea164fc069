"""Training losses: L_simple for each prediction target, timestep sampling and min-SNR weighting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .gaussian import GaussianDiffusion
from .schedule import extract

if TYPE_CHECKING:  # annotations only: the denoiser's call signature has its home with the samplers
    from ..models.base import Model

TimestepSampling = Literal["uniform", "beta"]
Weighting = Literal["none", "min_snr"]


def sample_timesteps(
    diffusion: GaussianDiffusion,
    batch: int,
    method: TimestepSampling = "uniform",
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``(batch,)`` training timesteps: uniform over [0, T), or ∝ β_t (more of the noisy steps)."""
    gdev = generator.device if generator is not None else "cpu"
    if method == "uniform":
        t = torch.randint(0, diffusion.T, (batch,), generator=generator, device=gdev)
    elif method == "beta":
        p = diffusion.schedule.betas.to(device=gdev, dtype=torch.float32)
        t = torch.multinomial(p, batch, replacement=True, generator=generator)
    else:
        raise ValueError(f"timestep sampling must be 'uniform' or 'beta', got {method!r}")
    return t.to(device)


def loss_weights(
    diffusion: GaussianDiffusion, t: Tensor, like: Tensor, weighting: Weighting, gamma: float = 5.0
) -> Tensor:
    """Per-sample weights ``(B, 1, …)`` on the MSE of the prediction target.

    min-SNR-γ (Hang et al. 2023) caps the implied x0-space weight at γ: the x0-space weight of
    the ε-loss is SNR, of the x0-loss is 1, of the v-loss is SNR + 1, so the factors are
    min(SNR, γ)/SNR, min(SNR, γ) and min(SNR, γ)/(SNR + 1) respectively.
    """
    if weighting == "none":
        return torch.ones_like(extract(diffusion.schedule.snr, t, like))
    if weighting != "min_snr":
        raise ValueError(f"weighting must be 'none' or 'min_snr', got {weighting!r}")
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be positive, got {gamma}")
    snr = extract(diffusion.schedule.snr, t, like)
    capped = snr.clamp(max=gamma)
    if diffusion.prediction == "eps":
        return capped / snr
    if diffusion.prediction == "x0":
        return capped
    return capped / (snr + 1)


def simple_loss(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor | None = None,
    weighting: Weighting = "none",
    gamma: float = 5.0,
) -> Tensor:
    """Per-sample L_simple ``(B,)``: weighted mean squared error of the prediction target."""
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = diffusion.q_sample(x0, t, noise)
    out = model(x_t, t)
    target = diffusion.target(x0, noise, t)
    w = loss_weights(diffusion, t, x0, weighting, gamma)
    err = (out.float() - target.float()) ** 2
    return (w * err).flatten(1).mean(dim=1)
