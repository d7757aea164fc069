"""The variational bound: Gaussian KL, the discretized decoder and bits per dimension.

L_vlb = KL(q(x_T|x0) ‖ N(0,I)) + Σ_{t≥1} KL(q(x_{t−1}|x_t,x0) ‖ p_θ(x_{t−1}|x_t)) − log p_θ(x0|x_1),
in 0-based indices the sum runs over t = 1 … T−1 and the decoder is the t = 0 term.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .gaussian import GaussianDiffusion
from .schedule import extract

if TYPE_CHECKING:  # annotations only: the denoiser's call signature has its home with the samplers
    from ..models.base import Model

Decoder = Literal["discretized", "continuous"]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256
) -> Tensor:
    """log P(x) elementwise for data in [−1, 1] quantized to ``bins`` levels.

    Each level owns the interval x ± 1/(bins−1); the two edge levels own the tails to ±∞, so
    the probabilities of all levels sum to one. Tail-aware log-CDFs keep it finite everywhere.
    """
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + half)
    lower = inv_std * (x - mean - half)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # Φ(b) − Φ(a), computed on whichever side of 0 avoids cancellation.
    delta = torch.where(
        lower > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_mid = torch.log(delta.clamp(min=1e-12))
    edge = 1.0 - half
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_mid))


def prior_kl(diffusion: GaussianDiffusion, x0: Tensor) -> Tensor:
    """KL(q(x_T | x0) ‖ N(0, I)) summed per sample ``(B,)``, in nats."""
    t = torch.full((x0.shape[0],), diffusion.T - 1, dtype=torch.long, device=x0.device)
    mean, var = diffusion.q_mean_variance(x0, t)
    kl = normal_kl(mean, torch.log(var).expand_as(mean), torch.zeros_like(mean), torch.zeros_like(mean))
    return kl.flatten(1).sum(1)


def gaussian_log_density(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x; mean, e^{2·log_scale}) elementwise, for continuous data."""
    return -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2


def vb_term(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor | None = None,
    decoder: Decoder = "discretized",
) -> Tensor:
    """The bound's term at ``t`` per sample ``(B,)`` in nats: a KL for t ≥ 1, the decoder NLL at 0.

    ``decoder="discretized"`` is for 8-bit data in [−1, 1]; ``"continuous"`` scores x0 under the
    Gaussian density instead, which bounds a continuous NLL (used by the analytic tests).
    """
    x_t = diffusion.q_sample(x0, t, noise)
    p = diffusion.p_mean_variance(model(x_t, t), x_t, t, clip=False)
    true_mean, _ = diffusion.q_posterior(x0, x_t, t)
    true_logvar = extract(diffusion.schedule.posterior_log_variance_clipped, t, x_t)
    kl = normal_kl(true_mean, true_logvar.expand_as(true_mean), p.mean, p.log_variance.expand_as(p.mean))
    log_scale = (0.5 * p.log_variance).expand_as(p.mean)
    if decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x0, p.mean, log_scale)
    elif decoder == "continuous":
        nll = -gaussian_log_density(x0, p.mean, log_scale)
    else:
        raise ValueError(f"decoder must be 'discretized' or 'continuous', got {decoder!r}")
    return torch.where(t == 0, nll.flatten(1).sum(1), kl.flatten(1).sum(1))


@torch.no_grad()
def bits_per_dim(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: Tensor,
    num_timesteps: int | None = None,
    generator: torch.Generator | None = None,
    decoder: Decoder = "discretized",
    max_rows: int = 256,
) -> Tensor:
    """The bound in bits per dimension per sample ``(B,)``.

    ``num_timesteps=None`` sums all T terms exactly (one x_t draw per term), ⌊max_rows/B⌋ timesteps per network
    call, so that a few images need T·B/max_rows calls instead of T. An int draws that many t uniformly per
    sample and returns the unbiased estimate T·mean(terms) + prior.
    """
    dims = x0[0].numel()
    B, T = x0.shape[0], diffusion.T
    gdev = generator.device if generator is not None else "cpu"

    def noise(shape: torch.Size = x0.shape) -> Tensor:
        return torch.randn(shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)

    total = prior_kl(diffusion, x0)
    if num_timesteps is None:
        per_call = max(1, max_rows // B)
        for first in range(0, T, per_call):
            steps = torch.arange(first, min(first + per_call, T), device=x0.device)
            rows = x0.repeat(len(steps), *([1] * (x0.ndim - 1)))  # step-major: B rows per timestep
            terms = vb_term(diffusion, model, rows, steps.repeat_interleave(B), noise(rows.shape), decoder)
            total = total + terms.view(len(steps), B).sum(0)
    else:
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be ≥ 1, got {num_timesteps}")
        acc = torch.zeros_like(total)
        for _ in range(num_timesteps):
            t = torch.randint(0, T, (B,), generator=generator, device=gdev).to(x0.device)
            acc = acc + vb_term(diffusion, model, x0, t, noise(), decoder)
        total = total + acc * (T / num_timesteps)
    return total / (dims * math.log(2.0))
