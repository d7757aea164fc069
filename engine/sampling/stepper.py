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
from .ode import OdeLane, OdePlan
from .plan import SamplingPlan, StepCoeffs
from .spec import SamplingRun
from .step import History, draw_noise, sampling_step
from .table import KEEP, PUSH


@dataclass(frozen=True)
class SampleFrame:
    """State after model evaluation ``step`` (1-based) of ``of``: ``x_t`` is the new state and ``x0``
    the prediction made at model timestep ``t``. Both ``(N, C, H, W)``; at the last step ``x_t`` is the final
    sample. An adaptive run's ``of`` is its expected total, exact at the end; its ``t`` is where it stands."""

    step: int
    of: int
    t: int
    x_t: Tensor
    x0: Tensor

    @property
    def last(self) -> bool:
        return self.step == self.of


class Lane:
    """One run's state in a stepper's batch (on the stepper's device); ``step`` counts the steps taken."""

    def __init__(self, plan: SamplingPlan, x: Tensor, generator: torch.Generator | None, clip: bool,
                 cond: Conditioning | None, repeat: int = 1) -> None:
        self.plan, self.x, self.generator, self.clip, self.cond = plan, x, generator, clip, cond
        self.n, self.repeat = int(x.shape[0]), repeat
        self.history: list[Tensor] | None = [torch.zeros_like(x) for _ in range(plan.slots)] if plan.slots else None
        self.step = 0

    @property
    def done(self) -> bool:
        return self.step >= self.plan.K

    def draw_noise(self) -> Tensor:
        """This step's noise, on the generator's own device (drawn before the step, so that a failed batch
        can be retried lane by lane with the same draws)."""
        gdev = self.generator.device if self.generator is not None else torch.device("cpu")
        return tile(draw_noise((self.n // self.repeat, *self.x.shape[1:]), self.generator, gdev), self.repeat)


class Stepper:
    """Advances lanes through ``denoiser`` under ``diffusion``'s prediction type and data range."""

    def __init__(self, denoiser: Denoiser, diffusion: GaussianDiffusion, device: torch.device | str) -> None:
        self.denoiser, self.diffusion, self.device = denoiser, diffusion, torch.device(device)

    @classmethod
    def for_model(cls, model: SamplingModel, device: torch.device | str) -> Stepper:
        return cls(as_denoiser(model.net, model.num_classes > 0), model.diffusion, device)

    def start(self, plan: SamplingPlan | OdePlan, shape: tuple[int, ...], generator: torch.Generator | None,
              x_start: Tensor | None = None, clip: bool = True, cond: Conditioning | None = None,
              repeat: int = 1) -> AnyLane:
        """A lane at step 0: x_T drawn from ``generator``, or ``x_start`` ``(1 or N, C, H, W)`` repeated to N.

        ``repeat``: the N samples are that many copies of N/repeat draws, x_T and every step's noise alike (the
        rows of a guidance grid)."""
        if x_start is None:
            x = tile(draw_noise((shape[0] // repeat, *shape[1:]), generator, self.device), repeat)
        else:
            x = x_start.to(self.device, torch.float32).expand(shape).clone()
        cond = None if cond is None else cond.to(self.device)
        if isinstance(plan, OdePlan):
            return OdeLane(plan, x, generator, clip, cond)
        return Lane(plan, x, generator, clip, cond, repeat)

    def start_run(self, run: SamplingRun) -> AnyLane:
        x_start = None if run.start is None else run.start.x
        return self.start(run.plan, run.shape, run.generator, x_start, run.spec.clip, run.cond, run.rows)

    def advance(self, lanes: Sequence[AnyLane], noise: Sequence[Tensor | None] | None = None) -> list[SampleFrame]:
        """One step for every lane in ``lanes``: ONE denoiser call over all their rows, ONE update of the
        fixed-step lanes' rows, and one stage of each adaptive lane.

        ``noise`` holds each lane's draw for this step (:meth:`Lane.draw_noise`); drawn here when None.
        Returns each lane's frame (views into the batch's output). Raises only before any lane has changed.
        """
        noise = [lane.draw_noise() for lane in lanes] if noise is None else noise
        fixed = [(lane, z) for lane, z in zip(lanes, noise, strict=True) if isinstance(lane, Lane)]
        ode = [lane for lane in lanes if isinstance(lane, OdeLane)]
        points = [lane.point() for lane in ode]
        coeffs = StepCoeffs.cat([lane.plan.coeffs(lane.step, lane.n, self.device, lane.clip) for lane, _ in fixed]) \
            if fixed else None
        xs = [lane.x for lane, _ in fixed] + [p[0] for p in points]
        ts = ([coeffs.t] if coeffs is not None else []) + [p[1] for p in points]
        t = _cat(ts) if not points else torch.cat([v.to(torch.float32) for v in ts])
        cond = Conditioning.cat([lane.cond for lane, _ in fixed] + [lane.cond for lane in ode])
        x_all = _cat(xs)
        out = self.denoiser(x_all, t, cond)
        frames: dict[int, SampleFrame] = {}
        b = len(coeffs) if coeffs is not None else 0
        stages, a = [], b  # every adaptive lane's stage first: a bad one raises before any lane has changed
        for lane, (x, _) in zip(ode, points, strict=True):
            stages.append(lane.stage(self.diffusion, x, out[a : a + lane.n]))
            a += lane.n
        a = 0
        if coeffs is not None:
            x_prev, x0, eps = sampling_step(self.diffusion.prediction, out[:b], x_all[:b], coeffs,
                                            _cat([z for _, z in fixed]).to(self.device), self.diffusion.clip_range,
                                            _batch_history([lane for lane, _ in fixed]))
            for lane, _ in fixed:
                b = a + lane.n
                lane.x = x_prev[a:b]
                if lane.history is not None:
                    _write_history(lane, (x0 if lane.plan.history == "x0" else eps)[a:b])
                lane.step += 1
                frames[id(lane)] = SampleFrame(lane.step, lane.plan.K, int(lane.plan.timesteps[lane.step - 1]),
                                               x_prev[a:b], x0[a:b])
                a = b
        for lane, (drift, x0_hat) in zip(ode, stages, strict=True):
            lane.feed(drift, x0_hat)
            frames[id(lane)] = SampleFrame(lane.step, lane.expected_evaluations(), lane.model_timestep(), lane.x,
                                           lane.x0)
        return [frames[id(lane)] for lane in lanes]

    def iterate(self, lane: AnyLane) -> Iterator[SampleFrame]:
        """Drive one lane to the end, a frame per step."""
        while not lane.done:
            yield self.advance([lane])[0]


#: A run's state in a batch: a fixed-step plan's, or an adaptive ODE solve's.
AnyLane = Lane | OdeLane


def _batch_history(lanes: Sequence[Lane]) -> History | None:
    """Every lane's history slots as one tensor per slot; lanes with fewer slots (or none) get zeros there, which
    their rows weigh by zero."""
    S = max((len(lane.history) for lane in lanes if lane.history is not None), default=0)
    if not S:
        return None
    zeros: dict[int, Tensor] = {}

    def slot(lane: Lane, k: int) -> Tensor:
        if lane.history is not None and k < len(lane.history):
            return lane.history[k]
        return zeros.setdefault(lane.n, torch.zeros_like(lane.x))

    return [_cat([slot(lane, k) for lane in lanes]) for k in range(S)]


def _write_history(lane: Lane, value: Tensor) -> None:
    """Store the step's prediction where the lane's plan says (:class:`~engine.sampling.table.StepTable`)."""
    assert lane.history is not None
    where = lane.plan.writes[lane.step]
    if where == PUSH:
        lane.history = [value, *lane.history[:-1]]
    elif where != KEEP:
        lane.history[where] = value


def tile(x: Tensor, repeat: int) -> Tensor:
    """``x`` ``(n, …)`` repeated ``repeat`` times along the batch, ``(repeat·n, …)`` (no copy when once)."""
    return x if repeat == 1 else x.repeat(repeat, *([1] * (x.ndim - 1)))


def _cat(parts: list[Tensor]) -> Tensor:
    """One tensor of ``parts`` along the batch, without a copy when there is only one."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
