"""A playground job's work on the worker thread: train in slices, report progress, then sample, trace and draw.

The worker gives a playground job slices of its own thread between sampling ticks (see
:meth:`app.runtime.worker.SamplingWorker._toy_turn`), so training and sampling never run torch ops at once:
the job's ``seconds`` are the worker's seconds spent training it, and a busy server stretches its wall time
instead of slowing the sampling jobs beyond the share the operator set (``toy_share``).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from engine import BOARD, FIELD_TIMESTEPS, ToyTrainer

from .jobs import ToyJob
from .results import Points, ToyDone, ToyProgress, ToyStarted

PROGRESS_EVERY_S = 0.5  # wall seconds between progress events
CLOUD = (500, "ddim", 20)  # each progress event's fresh samples: how many, by which sampler, in how many steps
SHOWN_DATA = 1000  # the training points the page draws behind the samples
TRAILS = (64, 50)  # particles traced along the SDE and the ODE, and the levels of each
FIELD_GRID = 21  # the ε̂ field's points per side of the board


def points(x: Tensor) -> Points:
    """``(N, 2)`` → nested lists, rounded to 1e-4 (finer than the page draws, and a third of the JSON)."""
    return (torch.round(x.float() * 1e4) / 1e4).tolist()


def start(job: ToyJob) -> None:
    """Build the job's trainer and report the points it trains on."""
    order = job.order
    with torch.inference_mode(False):  # the worker's loop runs in inference mode; a trainer needs autograd
        job.trainer = ToyTrainer(order.data(), order.seed)
    shown = order.data()(SHOWN_DATA, torch.Generator().manual_seed(order.seed + 1))
    job.log.put(ToyStarted(points(shown)))


def work(job: ToyJob, budget_s: float) -> bool:
    """Train ``job`` for about ``budget_s`` seconds (at least one step, never past its ``seconds``), report
    progress when due, and finish it once its seconds are spent; True when it is finished. Its seconds count the
    training alone; the worker's share counts everything done here (see the worker's ``_toy_turn``)."""
    trainer, order = job.trainer, job.order
    assert trainer is not None
    t0 = time.perf_counter()
    end = t0 + min(budget_s, order.seconds - job.trained_s)
    with torch.inference_mode(False), torch.enable_grad():
        while True:
            job.window.append(trainer.train_step())
            if time.perf_counter() >= end:
                break
    job.trained_s += time.perf_counter() - t0
    job.step = trainer.step
    finished = job.trained_s >= order.seconds
    now = time.monotonic()
    if finished or now - job.last_progress >= PROGRESS_EVERY_S:
        job.last_progress = now
        loss = sum(job.window) / len(job.window)
        job.window.clear()
        job.losses.append((job.step, round(loss, 5)))
        if not finished:
            n, sampler, steps = CLOUD
            cloud = trainer.sample(n, sampler, steps, order.seed + job.step)  # type: ignore[arg-type]
            job.log.put(ToyProgress(job.step, round(loss, 5), round(job.trained_s, 3), points(cloud)))
    if finished:
        job.log.put(result(job))
    return finished


def result(job: ToyJob) -> ToyDone:
    """The trained model's samples, particle trails and ε̂ field."""
    trainer, order = job.trainer, job.order
    assert trainer is not None
    x = trainer.sample(order.n, order.sampler, order.steps, order.seed)  # type: ignore[arg-type]
    flows = trainer.flows(*TRAILS, order.seed)
    field = trainer.field(BOARD, FIELD_GRID)
    alpha_bars = trainer.diffusion.schedule.alpha_bars
    return ToyDone(
        steps=job.step, seconds=round(job.trained_s, 3), elapsed_ms=round(job.elapsed_ms or 0.0, 1),
        points=points(x), sde=[points(p) for p in flows.sde], ode=[points(p) for p in flows.ode], extent=BOARD,
        field_t=list(FIELD_TIMESTEPS), field_sigma=[round(math.sqrt(1 - float(alpha_bars[t])), 5)
                                                    for t in FIELD_TIMESTEPS],
        field=[[points(row) for row in grid] for grid in field], losses=list(job.losses))
