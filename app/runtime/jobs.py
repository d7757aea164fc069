"""The worker's jobs: what every job shares (its id, log, state and readers), a sampling job, and a playground
(toy) job that trains a point denoiser and then samples it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from engine import AnyLane, OdePlan, SamplingPlan, SamplingRun, ToyName, resample, toy_points

from .frames import JobLog

JobStatus = Literal["queued", "running", "done", "cancelled", "error"]


class QueueFull(Exception):
    """The queue is at its limit; the client should retry later (HTTP 429)."""


@dataclass(kw_only=True)
class BaseJob:
    """What the worker, the event streams and the per-client limit need of any job."""

    id: str
    log: JobLog
    status: JobStatus = "queued"
    position_sent: int | None = None  # the queue position in the last ``queued`` event
    step: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    error_field: str | None = None  # the request field a failed run could not honour, when it was one
    cancel_requested: bool = False
    readers: int = 0  # event streams attached now: a finished job is kept while one is
    left: float | None = None  # when the last of them hung up

    @property
    def done(self) -> bool:
        return self.status in ("done", "cancelled", "error")

    @property
    def elapsed_ms(self) -> float | None:
        if self.started is None:
            return None
        return ((self.finished or time.monotonic()) - self.started) * 1000.0

    @property
    def terminal_id(self) -> int:
        """The SSE id of the job's terminal event: above every other event's id."""
        raise NotImplementedError


@dataclass(kw_only=True)
class Job(BaseJob):
    """One sampling request: a resolved run (``run``: its plan, labels and seeded generator) and its log."""

    run: SamplingRun
    frame_every: int
    of: int | None = None  # the evaluations the last frame expected (an adaptive run's changes as it goes)
    lane: AnyLane | None = None  # the run's state in the stepper while it is live (the worker thread's)

    @property
    def n(self) -> int:
        """Images in the job: the request's n, times the rows of a guidance grid."""
        return self.run.shape[0]

    @property
    def plan(self) -> SamplingPlan | OdePlan:
        return self.run.plan

    @property
    def seed(self) -> int:
        assert self.run.spec.seed is not None
        return self.run.spec.seed

    @property
    def terminal_id(self) -> int:
        return self.plan.K + 1


@dataclass(frozen=True)
class ToyOrder:
    """A checked playground request: train on ``dataset`` (or on ``points`` ``(N, 2)``) for ``seconds`` of the
    worker's time, then draw ``n`` points with ``steps`` levels of ``sampler``; ``seed`` seeds all of it."""

    dataset: ToyName
    points: Tensor | None
    seconds: float
    n: int
    sampler: str
    steps: int | None  # None: the sampler's default (ode_rk45 picks its own)
    seed: int

    def data(self) -> Callable[[int, torch.Generator], Tensor]:
        if self.points is not None:
            mine = self.points
            return lambda n, g: resample(mine, n, g)
        return lambda n, g: toy_points(self.dataset, n, g)


@dataclass(kw_only=True)
class ToyJob(BaseJob):
    """A playground job; ``step`` counts its training steps, ``trained_s`` the worker's seconds spent on them."""

    order: ToyOrder
    units: Iterator[None] | None = None  # its work (app.runtime.toy.units), advanced on the worker thread
    trained_s: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss) per progress event
    window: list[float] = field(default_factory=list)  # losses since the last progress event
    last_progress: float = float("-inf")

    @property
    def terminal_id(self) -> int:
        return self.step + 1  # progress events' ids are training steps
