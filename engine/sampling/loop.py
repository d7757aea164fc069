"""Offline sampling: run a plan over one batch, frame by frame (:func:`sample_iter`) or to the end."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion
from .guidance import Conditioning, guided_forward
from .plan import SamplingPlan
from .step import Model, draw_noise, sampling_step


@dataclass(frozen=True)
class SampleFrame:
    """State after reverse step ``step`` (1-based) of ``of``: ``x_t`` is the new state and ``x0``
    the prediction made at model timestep ``t``. Both ``(N, C, H, W)``; at ``step == of``
    ``x_t`` is the final sample."""

    step: int
    of: int
    t: int
    x_t: Tensor
    x0: Tensor


@torch.inference_mode()
def sample_iter(
    model: Model,
    diffusion: GaussianDiffusion,
    plan: SamplingPlan,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_start: Tensor | None = None,
    clip: bool = True,
    cond: Conditioning | None = None,
) -> Iterator[SampleFrame]:
    """Run ``plan`` and yield a :class:`SampleFrame` after every step.

    ``shape`` is ``(N, C, H, W)``. ``x_start`` (same shape) replaces the x_T draw, for runs that
    begin from a noised image; the plan must then start at that image's t. ``cond`` gives a
    class-conditional model its labels and guidance scales (see :mod:`engine.sampling.guidance`).
    """
    x = draw_noise(shape, generator, device) if x_start is None else x_start.to(device).float()
    n = shape[0]
    history = (torch.zeros_like(x), torch.zeros_like(x)) if plan.order else None
    cond = cond.to(device) if cond is not None else None
    for step in range(plan.K):
        c = plan.coeffs(step, n, device, clip)
        out = model(x, c.t) if cond is None else guided_forward(model, x, c.t, cond)
        x, x0 = sampling_step(diffusion.prediction, out, x, c, draw_noise(shape, generator, device),
                              diffusion.clip_range, history)
        if history is not None:
            history = (x0, history[0])
        yield SampleFrame(step + 1, plan.K, int(plan.timesteps[step]), x, x0)


def sample(
    model: Model,
    diffusion: GaussianDiffusion,
    plan: SamplingPlan,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_start: Tensor | None = None,
    clip: bool = True,
    progress: bool = False,
    cond: Conditioning | None = None,
) -> Tensor:
    """Run ``plan`` to the end and return the final samples ``(N, C, H, W)``."""
    frames = sample_iter(model, diffusion, plan, shape, generator, device, x_start, clip, cond)
    if progress:
        from tqdm.auto import tqdm

        frames = tqdm(frames, total=plan.K, desc=f"{plan.sampler} {plan.K} steps", unit="step")
    last = None
    for last in frames:  # noqa: B007 - only the final frame is kept
        pass
    assert last is not None
    return last.x_t
