"""The sampling worker: one thread owns the model and batches every live job into each forward.

Each tick takes live jobs round-robin until ``max_batch`` samples, concatenates their x_t and
per-sample step coefficients (each job at its own step of its own plan), runs ONE UNet forward,
and applies :func:`engine.sampling_step` once for the whole batch. Jobs join and leave between
ticks. Every job draws x_T and its per-step noise from its own generator in the same order as
:func:`engine.sample_iter`, so a seed gives the same images however jobs are batched. The worker
reports each job's progress as typed results (:mod:`app.results`) in the job's log.

Rule: on CPU, large torch ops run only on the worker thread. Every thread that has run one keeps an
OpenMP team until it exits, and a second team makes the worker's helpers sleep and wake on every op.
So the warm-up forward runs here, a denoise job's start image is repeated to n here, frames are
converted with NumPy, and anything else goes through :func:`app.threads.on_a_thread_that_exits`.
tests/test_server_threads.py guards this.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from torch import Tensor

from engine import (
    Conditioning,
    LoadedModel,
    SamplingPlan,
    StepCoeffs,
    draw_noise,
    guided_forward,
    resolve_labels,
    sampling_step,
)
from engine.io.images import make_grid, png_bytes, to_uint8_array
from engine.sampling import History, LabelSpec

from .frames import EventLog, FrameEncoder, FrameFormat, encode_frame, grid
from .results import Cancelled, Done, Failed, Frame, Queued, Started

log = logging.getLogger(__name__)


JobStatus = Literal["queued", "running", "done", "cancelled", "error"]


class QueueFull(Exception):
    """The queue is at its limit; the client should retry later (HTTP 429)."""


@dataclass
class Job:
    """One request: ``n`` samples following ``plan`` from a seeded generator."""

    id: str
    n: int
    plan: SamplingPlan
    seed: int
    frame_every: int
    clip: bool
    frame_format: FrameFormat
    events: EventLog
    x_start: Tensor | None = None  # (1 or n, C, H, W) start image, repeated to n at admission
    status: JobStatus = "queued"
    position_sent: int | None = None  # the queue position in the last ``queued`` event
    step: int = 0
    x: Tensor | None = None
    history: History | None = None  # the last two x̂0, for multistep plans (on the model's device)
    labels: LabelSpec = None  # a class-conditional model's request, resolved at admission
    guidance: float = 1.0
    cond: Conditioning | None = None
    gen: torch.Generator = field(default_factory=torch.Generator)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    result: list[bytes] | None = None  # one PNG per image, once done
    grid_png: bytes | None = None

    @property
    def done(self) -> bool:
        return self.status in ("done", "cancelled", "error")

    @property
    def elapsed_ms(self) -> float | None:
        if self.started is None:
            return None
        return ((self.finished or time.monotonic()) - self.started) * 1000.0

    def drawn_labels(self) -> list[int | None] | None:
        """Each image's class once labels are drawn (None: no label); None before, or unconditional."""
        if self.cond is None:
            return None
        null = self.cond.null_label
        return [None if v == null else v for v in self.cond.labels.tolist()]


class Metrics:
    """Prometheus series of one server (its own registry, so apps never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("ddpm_queue_depth", "jobs waiting to start", registry=r)
        self.active_jobs = Gauge("ddpm_active_jobs", "jobs being stepped", registry=r)
        self.active_samples = Gauge("ddpm_active_samples", "samples in live jobs", registry=r)
        self.batch_size = Histogram("ddpm_batch_size", "samples per UNet forward", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.step_seconds = Histogram("ddpm_step_seconds", "worker tick latency (forward + update)", registry=r,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.frames_dropped = Counter("ddpm_frames_dropped_total", "frames a slow client skipped", registry=r)
        self.jobs = Counter("ddpm_jobs_total", "finished jobs by outcome", ["outcome"], registry=r)


class SamplingWorker:
    """Owns ``model`` on its device; thread-safe ``submit``/``cancel`` from request handlers."""

    def __init__(self, model: LoadedModel, device: torch.device, max_batch: int, max_active_jobs: int,
                 max_queue: int, event_buffer: int, job_ttl_s: float = 600.0, max_finished_jobs: int = 256) -> None:
        self.model, self.device = model, device
        self.num_classes = model.num_classes
        self.max_batch, self.max_active, self.max_queue = max_batch, max_active_jobs, max_queue
        self.event_buffer, self.job_ttl_s, self.max_finished = event_buffer, job_ttl_s, max_finished_jobs
        self.metrics = Metrics()
        self.encoder = FrameEncoder()
        self.jobs: dict[str, Job] = {}
        self._pending: deque[Job] = deque()
        self._live: list[Job] = []
        self._finished: deque[Job] = deque()  # in the order they finished, for _gc
        self._rr = 0
        self._fresh_tick = False  # the last tick served only jobs that had not stepped yet
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="sampling-worker", daemon=True)
        self._warmed = threading.Event()
        self._warm_error: BaseException | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the loop and return once the model has run one forward on the worker thread."""
        self._thread.start()
        self._warmed.wait()
        if self._warm_error is not None:
            raise self._warm_error

    def _warm_up(self) -> None:
        try:
            x = torch.zeros(1, *self.model.sample_shape, device=self.device)
            self.model.net(x, torch.zeros(1, dtype=torch.long, device=self.device))
        except BaseException as e:
            self._warm_error, self._stop = e, True
        finally:
            self._warmed.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; every unfinished job gets an ``error`` event so clients are not left hanging."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout)
        for job in list(self.jobs.values()):
            if not job.done:
                self._finish(job, "error", "the server is shutting down")
        self.encoder.close()

    # ---------------------------------------------------------------- API for handlers
    def submit(self, n: int, plan: SamplingPlan, seed: int, frame_every: int, clip: bool,
               x_start: Tensor | None = None, frame_format: FrameFormat = "png", labels: LabelSpec = None,
               guidance: float = 1.0) -> Job:
        with self._cv:
            # Jobs in _pending while there are free slots start at the next tick; the rest wait.
            waiting = len(self._pending) - max(0, self.max_active - len(self._live))
            if waiting >= self.max_queue:
                raise QueueFull(f"{waiting} jobs are already waiting (max_queue={self.max_queue})")
            self._gc()
            job = Job(id=secrets.token_hex(8), n=n, plan=plan, seed=seed, frame_every=frame_every, clip=clip,
                      frame_format=frame_format, events=EventLog(self.event_buffer, self.metrics.frames_dropped.inc),
                      x_start=x_start, labels=labels, guidance=guidance)
            job.gen.manual_seed(seed)
            self.jobs[job.id] = job
            self._pending.append(job)
            job.position_sent = self.position(job)
            job.events.append(Queued(job.position_sent))
            self.metrics.queue_depth.set(len(self._pending))
            self._cv.notify_all()
        return job

    def cancel(self, job_id: str) -> Job | None:
        with self._cv:
            job = self.jobs.get(job_id)
            if job is not None and not job.done:
                job.cancel_requested = True
                if job in self._pending:  # never started: cancel now
                    self._pending.remove(job)
                    self._finish(job, "cancelled")
                self._cv.notify_all()
        return job

    def position(self, job: Job) -> int:
        """``job``'s place among the jobs that will still be waiting at the next tick (1 = next to start);
        0 once it is being stepped, or will be at the next tick."""
        with self._cv:  # deque.index compares in Python code, so another thread could mutate the deque mid-search
            if job.status != "queued":
                return 0
            try:
                index = self._pending.index(job)
            except ValueError:
                return 0
            return max(0, index + 1 - max(0, self.max_active - len(self._live)))

    # ---------------------------------------------------------------- the loop
    def _loop(self) -> None:
        with torch.inference_mode():
            self._warm_up()
            while True:
                with self._cv:
                    while not self._stop and not self._live and not self._pending:
                        self._cv.wait(timeout=1.0)
                    if self._stop:
                        return
                    self._admit()
                    batch = self._select()
                if batch:
                    self._tick(batch)

    def _admit(self) -> None:
        for job in [j for j in self._live if j.cancel_requested]:
            self._leave(job)
            self._finish(job, "cancelled")
        while self._pending and len(self._live) < self.max_active:
            job = self._pending.popleft()
            try:
                self._prepare(job)
            except Exception as e:
                self._finish(job, "error", f"could not start: {e}")
                continue
            job.status, job.started = "running", time.monotonic()
            labels = job.drawn_labels()
            job.events.append(Started(job.plan.K, job.n, job.seed, None if labels is None else tuple(labels),
                                      job.guidance if self.num_classes else None))
            self._live.append(job)
        for i, job in enumerate(self._pending):
            if job.position_sent != i + 1:  # only when it moved: a long queue would otherwise log one event per tick
                job.position_sent = i + 1
                job.events.append(Queued(i + 1))
        self._update_gauges()

    def _prepare(self, job: Job) -> None:
        """Labels, x_T and history, in :func:`engine.sample`'s order of generator draws (labels first)."""
        shape = (job.n, *self.model.sample_shape)
        if self.num_classes:
            labels = resolve_labels(job.labels, job.n, self.num_classes, job.gen)
            job.cond = Conditioning.of(labels, job.guidance, self.num_classes).to(self.device)
        job.x = (draw_noise(shape, job.gen, self.device) if job.x_start is None
                 else job.x_start.to(self.device).expand(shape).clone())
        if job.plan.order:
            job.history = (torch.zeros_like(job.x), torch.zeros_like(job.x))

    def _update_gauges(self) -> None:
        """Callers hold ``_cv``. Also run after every tick: jobs that finish there leave ``_live`` without
        another ``_admit`` (the loop sleeps once nothing is live), and the gauges must not stay stale."""
        self.metrics.queue_depth.set(len(self._pending))
        self.metrics.active_jobs.set(len(self._live))
        self.metrics.active_samples.set(sum(j.n for j in self._live))

    def _select(self) -> list[Job]:
        """Live jobs round-robin up to ``max_batch`` samples; a job's samples stay together.

        Jobs that have not taken a step yet get a tick of their own first, so a newcomer's first step
        (its first frame when it asked for every step) waits for the tick under way plus one tick over
        the newcomers only, not plus one over everyone.
        The tick after a newcomers' tick is always round-robin, so a stream of arrivals cannot starve
        the jobs already running.
        """
        if not self._live:
            return []
        fresh = [j for j in self._live if j.step == 0]
        if fresh and len(fresh) < len(self._live) and not self._fresh_tick:
            self._fresh_tick = True
            return self._fill(fresh)
        self._fresh_tick = False
        order = self._live[self._rr % len(self._live):] + self._live[: self._rr % len(self._live)]
        picked = self._fill(order)
        self._rr = (self._rr + len(picked)) % max(1, len(self._live))
        return picked

    def _fill(self, order: list[Job]) -> list[Job]:
        """Jobs from ``order`` that fit in ``max_batch`` samples, in order, skipping those that do not."""
        picked, total = [], 0
        for job in order:
            if total + job.n <= self.max_batch:
                picked.append(job)
                total += job.n
        return picked

    def _tick(self, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        # Drawn before the step, on the generators' own device, so that a batch that fails (say, out of
        # memory) is retried job by job with the same noise and every seed still gives its images.
        noise = [draw_noise(tuple(j.x.shape), j.gen, j.gen.device) for j in jobs]
        try:
            self._step(jobs, noise)
        except Exception:
            for job, job_noise in zip(jobs, noise, strict=True):
                try:
                    self._step([job], [job_noise])
                except Exception as e:
                    log.exception("job %s failed", job.id)
                    self._leave(job)
                    self._finish(job, "error", f"sampling failed: {type(e).__name__}: {e}")
        self.metrics.batch_size.observe(sum(j.n for j in jobs))
        self.metrics.step_seconds.observe(time.perf_counter() - t0)
        with self._cv:
            self._update_gauges()

    def _step(self, jobs: list[Job], noise: list[Tensor]) -> None:
        """One reverse step for ``jobs``; ``noise`` holds each job's draw for this step, in order.

        Raises only before any job has changed, so the caller can retry the jobs one by one."""
        m = self.model
        coeffs = StepCoeffs.cat([j.plan.coeffs(j.step, j.n, self.device, j.clip) for j in jobs])
        x = _cat([j.x for j in jobs])
        if self.num_classes:
            out = guided_forward(m.net, x, coeffs.t, Conditioning.cat([j.cond for j in jobs]))
        else:
            out = m.net(x, coeffs.t)
        noise_t = _cat(noise).to(self.device)
        history = None
        if any(j.history is not None for j in jobs):
            # single-step jobs' rows have zero weight on the history: zeros keep the batch one tensor
            rows = [j.history or (torch.zeros_like(j.x),) * 2 for j in jobs]
            history = (_cat([r[0] for r in rows]), _cat([r[1] for r in rows]))
        x_prev, x0 = sampling_step(m.diffusion.prediction, out, x, coeffs, noise_t, m.diffusion.clip_range, history)
        a = 0
        for job in jobs:
            b = a + job.n
            job.x = x_prev[a:b]
            if job.history is not None:
                job.history = (x0[a:b], job.history[0])
            job.step += 1
            last = job.step == job.plan.K
            if last:
                self._leave(job)  # the frame below takes its own copy
            if last or job.step % job.frame_every == 0:
                try:
                    self._emit_frame(job, x_prev[a:b], x0[a:b], last)
                except Exception as e:  # a lost intermediate frame is skipped; a lost last one ends the job
                    log.exception("job %s: frame %d could not be sent", job.id, job.step)
                    if last:
                        self._finish(job, "error", f"the last frame could not be sent: {type(e).__name__}: {e}")
            a = b

    def _leave(self, job: Job) -> None:
        """Take ``job`` out of the rotation and drop its state (the worker thread's to do: it owns ``job.x``)."""
        with self._cv:
            if job in self._live:
                self._live.remove(job)
        job.x = job.history = None

    def _emit_frame(self, job: Job, x_t: Tensor, x0: Tensor, last: bool) -> None:
        # Host copies are the only work here; the encoder thread does the rest.
        x_t, x0 = x_t.detach().to("cpu", copy=True), x0.detach().to("cpu", copy=True)
        step, of, t = job.step, job.plan.K, int(job.plan.timesteps[job.step - 1])
        vr = self.model.card.value_range

        def encode() -> None:
            try:
                u8 = to_uint8_array(x_t, vr)
                frame = Frame(step, of, t, make_grid(u8), grid(x0, vr))
                encode_frame(frame, job.frame_format)  # here, so that readers on the event loop find it done
                job.events.append(frame)
                if last:
                    job.result = [png_bytes(u8[i]) for i in range(u8.shape[0])]
                    job.grid_png = png_bytes(frame.x_t)
                    self._finish(job, "done")
            except Exception as e:
                log.exception("encoding job %s failed", job.id)
                if last:  # otherwise the job would stay "running" and its clients would wait forever
                    self._finish(job, "error", f"encoding the result failed: {type(e).__name__}: {e}")

        self.encoder.submit(encode)

    def _finish(self, job: Job, status: JobStatus, error: str | None = None) -> None:
        with self._cv:  # re-entrant: some callers hold it already
            if job.done:
                return
            job.status, job.error, job.finished = status, error, time.monotonic()
            job.x_start = None  # job.x is the worker thread's to clear, when the job leaves _live
            self._finished.append(job)
        if status == "done":
            job.events.append(Done(job.result or [], job.grid_png or b"", job.seed, round(job.elapsed_ms or 0.0, 1)))
        elif status == "cancelled":
            job.events.append(Cancelled(job.step))
        else:
            job.events.append(Failed(error or "failed"))
        self.metrics.jobs.labels(outcome=status).inc()

    def _gc(self) -> None:
        """Forget finished jobs after their TTL, and the oldest beyond ``max_finished`` (callers hold ``_cv``).

        Each finished job keeps up to ``event_buffer`` frames for Last-Event-ID replays, so the count is
        capped as well as the age: a client that creates and cancels jobs in a loop cannot grow memory."""
        now = time.monotonic()
        while self._finished and (len(self._finished) > self.max_finished
                                  or now - (self._finished[0].finished or now) > self.job_ttl_s):
            self.jobs.pop(self._finished.popleft().id, None)


def _cat(parts: list[Tensor]) -> Tensor:
    """One tensor of ``parts`` along the batch, without a copy when there is only one."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
