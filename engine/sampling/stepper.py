"""The one step sequence: a :class:`Stepper` advances a batch of runs by one model call and one update.

Each run in the batch is a :class:`Lane`: its x, its plan, its history of data predictions, its labels and
its generator. :meth:`Stepper.advance` concatenates the lanes' rows (each lane at its own step of its own
plan), calls the denoiser once, applies :func:`~engine.sampling.step.sampling_step` once, and hands each
lane its slice back. :func:`~engine.sampling.loop.sample_iter` drives one lane to the end; the server's
worker drives many, joining and leaving between steps. Every lane draws its x_T and its per-step noise
from its own generator in the same order, so a seed gives the same images however runs are batched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion
from ..models.base import SamplingModel
from .guidance import Conditioning, Denoiser, as_denoiser
from .plan import SamplingPlan, StepCoeffs
from .spec import SamplingRun
from .step import History, draw_noise, sampling_step


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


class Lane:
    """One run's state in a stepper's batch (on the stepper's device); ``step`` counts the steps taken."""

    def __init__(self, plan: SamplingPlan, x: Tensor, generator: torch.Generator | None, clip: bool,
                 cond: Conditioning | None) -> None:
        self.plan, self.x, self.generator, self.clip, self.cond = plan, x, generator, clip, cond
        self.n = int(x.shape[0])
        self.history: History | None = (torch.zeros_like(x), torch.zeros_like(x)) if plan.order else None
        self.step = 0

    @property
    def done(self) -> bool:
        return self.step >= self.plan.K

    def draw_noise(self) -> Tensor:
        """This step's noise, on the generator's own device (drawn before the step, so that a failed batch
        can be retried lane by lane with the same draws)."""
        gdev = self.generator.device if self.generator is not None else torch.device("cpu")
        return draw_noise(tuple(self.x.shape), self.generator, gdev)


class Stepper:
    """Advances lanes through ``denoiser`` under ``diffusion``'s prediction type and data range."""

    def __init__(self, denoiser: Denoiser, diffusion: GaussianDiffusion, device: torch.device | str) -> None:
        self.denoiser, self.diffusion, self.device = denoiser, diffusion, torch.device(device)

    @classmethod
    def for_model(cls, model: SamplingModel, device: torch.device | str) -> Stepper:
        return cls(as_denoiser(model.net, model.num_classes > 0), model.diffusion, device)

    def start(self, plan: SamplingPlan, shape: tuple[int, ...], generator: torch.Generator | None,
              x_start: Tensor | None = None, clip: bool = True, cond: Conditioning | None = None) -> Lane:
        """A lane at step 0: x_T drawn from ``generator``, or ``x_start`` ``(1 or N, C, H, W)`` repeated to N."""
        if x_start is None:
            x = draw_noise(shape, generator, self.device)
        else:
            x = x_start.to(self.device, torch.float32).expand(shape).clone()
        return Lane(plan, x, generator, clip, None if cond is None else cond.to(self.device))

    def start_run(self, run: SamplingRun) -> Lane:
        return self.start(run.plan, run.shape, run.generator, None if run.start is None else run.start.x,
                          run.spec.clip, run.cond)

    def advance(self, lanes: Sequence[Lane], noise: Sequence[Tensor] | None = None) -> list[SampleFrame]:
        """One step for every lane in ``lanes``: ONE denoiser call over all their rows, ONE update.

        ``noise`` holds each lane's draw for this step (:meth:`Lane.draw_noise`); drawn here when None.
        Returns each lane's frame (views into the batch's output). Raises only before any lane has changed.
        """
        noise = [lane.draw_noise() for lane in lanes] if noise is None else noise
        coeffs = StepCoeffs.cat([lane.plan.coeffs(lane.step, lane.n, self.device, lane.clip) for lane in lanes])
        x = _cat([lane.x for lane in lanes])
        out = self.denoiser(x, coeffs.t, Conditioning.cat([lane.cond for lane in lanes]))
        history = None
        if any(lane.history is not None for lane in lanes):
            # single-step lanes' rows have zero weight on the history: zeros keep the batch one tensor
            rows = [lane.history or (torch.zeros_like(lane.x),) * 2 for lane in lanes]
            history = (_cat([r[0] for r in rows]), _cat([r[1] for r in rows]))
        x_prev, x0 = sampling_step(self.diffusion.prediction, out, x, coeffs, _cat(list(noise)).to(self.device),
                                   self.diffusion.clip_range, history)
        frames, a = [], 0
        for lane in lanes:
            b = a + lane.n
            lane.x = x_prev[a:b]
            if lane.history is not None:
                lane.history = (x0[a:b], lane.history[0])
            lane.step += 1
            frames.append(SampleFrame(lane.step, lane.plan.K, int(lane.plan.timesteps[lane.step - 1]),
                                      x_prev[a:b], x0[a:b]))
            a = b
        return frames

    def iterate(self, lane: Lane) -> Iterator[SampleFrame]:
        """Drive one lane to the end, a frame per step."""
        while not lane.done:
            yield self.advance([lane])[0]


def _cat(parts: list[Tensor]) -> Tensor:
    """One tensor of ``parts`` along the batch, without a copy when there is only one."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
