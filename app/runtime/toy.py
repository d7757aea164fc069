"""A playground job's work on the worker thread, as a generator of small units: build the trainer, one training
step, one step of a progress or final sampler, the field.

The worker advances a job's units between sampling ticks for as long as its share allows (see
:meth:`app.runtime.worker.SamplingWorker._toy_turn`), so training and sampling never run torch ops at once and
no unit holds a sampling job up for longer than one training or sampler step (or the field's one evaluation,
about as long). The job's ``seconds`` are the worker's seconds spent on its training steps: a busy server
stretches its wall time instead of slowing the sampling jobs beyond the share the operator set (``toy_share``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch

from engine import BOARD, FIELD_TIMESTEPS, ToyTrainer

from .jobs import ToyJob
from .results import ToyDone, ToyProgress, ToyStarted

PROGRESS_EVERY_S = 0.5  # wall seconds between progress events
CLOUD = (500, "ddim", 20)  # each progress event's fresh samples: how many, by which sampler, in how many steps
SHOWN_DATA = 1000  # the training points the page draws behind the samples
PROGRESS_KEPT = 4  # progress events a job's log keeps for slow clients and replays: the latest is what counts
TRAILS = (64, 50)  # particles traced along the SDE and the ODE, and the levels of each
FIELD_GRID = 21  # the ε̂ field's points per side of the board


def units(job: ToyJob) -> Iterator[None]:
    """The job's work, yielding after each unit; it logs ``toy_started``, the progress and ``toy_done``."""
    order = job.order
    with torch.inference_mode(False):  # the worker's loop runs in inference mode; a trainer needs autograd
        trainer = ToyTrainer(order.data(), order.seed)
    shown = order.data()(SHOWN_DATA, torch.Generator().manual_seed(order.seed + 1))
    job.log.put(ToyStarted(shown))
    yield
    while job.trained_s < order.seconds:
        t0 = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():  # per step: the mode must not outlive a yield
            job.window.append(trainer.train_step())
        job.trained_s += time.perf_counter() - t0
        job.step = trainer.step
        yield
        if job.trained_s < order.seconds and time.monotonic() - job.last_progress >= PROGRESS_EVERY_S:
            job.last_progress = time.monotonic()
            loss = _close_window(job)
            n, sampler, steps = CLOUD
            cloud = yield from _sample(trainer, n, sampler, steps, order.seed + job.step)
            job.log.put(ToyProgress(job.step, loss, round(job.trained_s, 3), cloud))
    _close_window(job)
    yield from _finish(job, trainer)


def _close_window(job: ToyJob) -> float:
    """The mean loss since the last progress event (at least one training step), recorded with the step it ends
    at."""
    loss = round(sum(job.window) / len(job.window), 5)
    job.window.clear()
    job.losses.append((job.step, loss))
    return loss


def _sample(trainer: ToyTrainer, n: int, sampler: str, steps: int | None, seed: int) -> Iterator[None]:
    """``n`` points from the EMA model, a unit per model evaluation; returns them ``(n, 2)``."""
    x = None
    for frame in trainer.sample_iter(n, sampler, steps, torch.Generator().manual_seed(seed)):  # type: ignore[arg-type]
        x = frame.x_t
        yield
    assert x is not None
    return x


def _finish(job: ToyJob, trainer: ToyTrainer) -> Iterator[None]:
    """The trained model's samples, particle trails and ε̂ field, then ``toy_done``."""
    order = job.order
    points = yield from _sample(trainer, order.n, order.sampler, order.steps, order.seed)
    flows = []
    for sampler in ("ddpm", "ddim"):  # from one seed: the same x_T
        path = []
        for x in trainer.trail_iter(TRAILS[0], sampler, TRAILS[1], order.seed):  # type: ignore[arg-type]
            path.append(x)
            yield
        flows.append(torch.stack(path))
    field = trainer.field(BOARD, FIELD_GRID)  # one unit: 11 × 441 points through the MLP
    yield
    alpha_bars = trainer.diffusion.schedule.alpha_bars
    job.log.put(ToyDone(
        steps=job.step, seconds=round(job.trained_s, 3), elapsed_ms=round(job.elapsed_ms or 0.0, 1),
        points=points, sde=flows[0], ode=flows[1], extent=BOARD, field_t=list(FIELD_TIMESTEPS),
        field_sigma=[round(math.sqrt(1 - float(alpha_bars[t])), 5) for t in FIELD_TIMESTEPS],
        field=field, losses=list(job.losses)))


def work(job: ToyJob, budget_s: float) -> bool:
    """Advance ``job`` by at least one unit and until ``budget_s`` seconds have passed; True once it is done."""
    assert job.units is not None
    end = time.perf_counter() + budget_s
    while True:
        try:
            next(job.units)
        except StopIteration:
            return True
        if time.perf_counter() >= end:
            return False
