"""Offline sampling: one run driven through the :class:`~engine.sampling.stepper.Stepper`, frame by frame
(:func:`sample_iter`, :func:`run_frames`) or to the end (:func:`sample`, :func:`final`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion
from ..models.base import SamplingModel
from .guidance import Conditioning, as_denoiser
from .plan import SamplingPlan
from .spec import SamplingRun
from .stepper import SampleFrame, Stepper


@torch.inference_mode()
def sample_iter(
    model: Callable[..., Tensor],
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
    class-conditional ``model`` its labels and guidance scales (see :mod:`engine.sampling.guidance`).
    """
    stepper = Stepper(as_denoiser(model, conditional=cond is not None), diffusion, device)
    yield from stepper.iterate(stepper.start(plan, shape, generator, x_start, clip, cond))


@torch.inference_mode()
def run_frames(run: SamplingRun, model: SamplingModel, device: torch.device | str = "cpu") -> Iterator[SampleFrame]:
    """A resolved run (:func:`engine.sampling.spec.resolve`) on ``model``, a frame per step."""
    stepper = Stepper.for_model(model, device)
    yield from stepper.iterate(stepper.start_run(run))


def last_frame(frames: Iterable[SampleFrame], progress: str | None = None, total: int | None = None) -> SampleFrame:
    """The last frame (its ``x_t`` ``(N, C, H, W)`` the samples, its ``step`` the evaluations made); ``progress``
    names a tqdm bar (with its ETA) over the steps."""
    if progress is not None:
        from tqdm.auto import tqdm

        frames = tqdm(frames, total=total, desc=progress, unit="step")
    last = None
    for last in frames:  # noqa: B007 - only the final frame is kept
        pass
    assert last is not None
    return last


def sample(
    model: Callable[..., Tensor],
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
    return last_frame(frames, f"{plan.sampler} {plan.K} steps" if progress else None, plan.K).x_t
