"""The one reverse step every sampler, offline or batched in the server, goes through."""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.gaussian import Prediction, split_prediction
from .plan import StepCoeffs

#: The two previous data predictions (x̂0(i−1), x̂0(i−2)) of each sample, each ``(B, C, H, W)``.
History = tuple[Tensor, Tensor]


def sampling_step(
    prediction: Prediction,
    model_output: Tensor,
    x_t: Tensor,
    c: StepCoeffs,
    noise: Tensor,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    history: History | None = None,
) -> tuple[Tensor, Tensor]:
    """One reverse step for a batch whose samples may sit at different steps of different plans.

        x̂0 = split(model_output) (clipped where ``c.clip``)
        x_prev = b0·x̂0 + a·x_t + σ·z + b1·x̂0(i−1) + b2·x̂0(i−2)

    Args:
        prediction: the model's output type.
        model_output, x_t, noise: ``(B, C, H, W)``.
        c: per-sample coefficients, each ``(B,)``.
        history: the samples' previous data predictions; needed when any row has b1 or b2 ≠ 0
            (rows of single-step samplers may hold anything there, e.g. zeros).
    Returns:
        ``(x_prev, x0_hat)``, both ``(B, C, H, W)`` in float32 (or x_t's dtype if float64).
    """
    dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
    shape = (-1,) + (1,) * (x_t.ndim - 1)

    def b(v: Tensor) -> Tensor:
        return v.to(dtype).reshape(shape)

    x_t = x_t.to(dtype)
    x0, _ = split_prediction(prediction, model_output.to(dtype), x_t, b(c.sqrt_alpha_bar),
                             b(c.sqrt_one_minus_alpha_bar), c.clip, clip_range)
    x_prev = b(c.coef_x0) * x0 + b(c.coef_xt) * x_t + b(c.sigma) * noise.to(dtype)
    if history is not None:
        x_prev = x_prev + b(c.coef_x0_prev) * history[0].to(dtype) + b(c.coef_x0_prev2) * history[1].to(dtype)
    elif bool((c.coef_x0_prev != 0).any() or (c.coef_x0_prev2 != 0).any()):
        raise ValueError("a multistep update needs the previous data predictions (history)")
    return x_prev, x0


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """N(0, I) of ``shape`` from ``generator`` (on its own device), moved to ``device``.

    All samplers, offline and server, draw x_T and then one noise tensor per step through this,
    deterministic ones included, so a seed gives the same images however jobs are batched.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gdev).to(device)
