"""The sampling worker: one thread owns the model and batches every live job into each forward.

Each tick takes live jobs round-robin until ``max_batch`` samples and advances them together through the
engine's :class:`~engine.Stepper`: ONE model call over every job's rows (each job at its own step of its
own plan), ONE update. Jobs join and leave between ticks. Every job draws x_T and its per-step noise from
its own generator, as :func:`engine.sample_iter` does, so a seed gives the same images however jobs are
batched. The worker reports each job's progress as typed results holding tensors
(:mod:`app.runtime.results`) into the job's log, which encodes them off this thread
(:mod:`app.runtime.frames`).

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

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from torch import Tensor

from engine import LoadedModel, SampleFrame, SamplingRun, SpecError, Stepper

from . import toy
from .frames import FrameEncoder, JobLog
from .jobs import BaseJob, Job, JobStatus, QueueFull, ToyJob, ToyOrder
from .results import Cancelled, Done, Failed, Frame, Queued, Result, Started

__all__ = ["Job", "QueueFull", "SamplingWorker", "ToyJob"]
#: A playground job's slice of the worker's thread when no sampling job is live: how long a newcomer waits; and
#: the most credit it saves up while they are.
TOY_SLICE_S = 0.05

log = logging.getLogger(__name__)


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
        self.toy_seconds = Counter("ddpm_toy_seconds_total", "worker seconds spent on playground jobs (training "
                                   "and sampling them)", registry=r)
        self.jobs = Counter("ddpm_jobs_total", "finished jobs by outcome", ["outcome"], registry=r)


class SamplingWorker:
    """Owns ``model`` on its device; thread-safe ``submit``/``cancel`` from request handlers."""

    def __init__(self, model: LoadedModel, device: torch.device, max_batch: int, max_active_jobs: int,
                 max_queue: int, job_ttl_s: float = 600.0, max_finished_jobs: int = 256,
                 toy_share: float = 0.25, toy_orphan_s: float = 10.0) -> None:
        self.model, self.device = model, device
        self.toy_share, self.toy_orphan_s = toy_share, toy_orphan_s
        self._toy_credit = 0.0  # seconds the playground job may still take while sampling jobs are live
        self.stepper = Stepper.for_model(model, device)
        self.max_batch, self.max_active, self.max_queue = max_batch, max_active_jobs, max_queue
        self.job_ttl_s, self.max_finished = job_ttl_s, max_finished_jobs
        self.metrics = Metrics()
        self.encoder = FrameEncoder()  # the jobs' logs encode on its thread
        self.jobs: dict[str, BaseJob] = {}
        self._pending: deque[Job] = deque()
        self._live: list[Job] = []
        self._toys: deque[ToyJob] = deque()  # playground jobs; the first trains once started, the rest wait
        self._finished: deque[BaseJob] = deque()  # in the order they finished, for _gc
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
    def submit(self, run: SamplingRun, frame_every: int, log: JobLog) -> Job:
        """Queue ``run``; its results go to ``log``. Raises :class:`QueueFull` when the queue is at its limit."""
        with self._cv:
            self._check_queue()
            job = Job(id=secrets.token_hex(8), run=run, frame_every=frame_every, log=log)
            self._pending.append(job)
            self._queued(job)
        return job

    def submit_toy(self, order: ToyOrder, log: JobLog) -> ToyJob:
        """Queue a playground job (one trains at a time); :class:`QueueFull` as for :meth:`submit`."""
        with self._cv:
            self._check_queue()
            job = ToyJob(id=secrets.token_hex(8), order=order, log=log)
            self._toys.append(job)
            self._queued(job)
        return job

    def _check_queue(self) -> None:
        """Callers hold ``_cv``. Sampling jobs in _pending while there are free slots start at the next tick, and
        the first playground job starts at the next turn; the rest wait, and count against ``max_queue``."""
        waiting = max(0, len(self._pending) - max(0, self.max_active - len(self._live))) + max(0, len(self._toys) - 1)
        if waiting >= self.max_queue:
            raise QueueFull(f"{waiting} jobs are already waiting (max_queue={self.max_queue})")
        self._gc()

    def _queued(self, job: BaseJob) -> None:
        self.jobs[job.id] = job
        job.position_sent = self.position(job)
        job.log.put(Queued(job.position_sent))
        self.metrics.queue_depth.set(len(self._pending))
        self._cv.notify_all()

    def cancel(self, job_id: str) -> BaseJob | None:
        with self._cv:
            job = self.jobs.get(job_id)
            if job is not None and not job.done:
                job.cancel_requested = True
                if isinstance(job, ToyJob):
                    # one waiting ends now; the first is the worker's to end at its next turn (it may be mid-unit)
                    if job in self._toys and job is not self._toys[0]:
                        self._toys.remove(job)
                        self._finish(job, "cancelled")
                        self._renumber_toys()
                elif job.status == "queued" and job in self._pending:  # never started: cancel now
                    self._pending.remove(job)
                    self._finish(job, "cancelled")
                self._cv.notify_all()
        return job

    def attach(self, job: BaseJob) -> None:
        """An event stream starts reading ``job``: it is not forgotten while any stream reads it."""
        with self._cv:
            job.readers += 1

    def detach(self, job: BaseJob) -> None:
        """An event stream stopped reading ``job``; its time to live restarts now, so a client that hung up
        to reconnect with Last-Event-ID finds the job however late in its life it hung up."""
        with self._cv:
            job.readers -= 1
            job.left = time.monotonic()

    def position(self, job: BaseJob) -> int:
        """``job``'s place among the jobs that will still be waiting at the next tick (1 = next to start);
        0 once it is being stepped, or will be at the next tick. Playground jobs queue among themselves."""
        with self._cv:  # deque.index compares in Python code, so another thread could mutate the deque mid-search
            if job.status != "queued":
                return 0
            if isinstance(job, ToyJob):  # the first starts at the next turn
                return self._toys.index(job) if job in self._toys else 0
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
                    while not self._stop and not self._live and not self._pending and not self._toys:
                        self._cv.wait(timeout=1.0)
                    if self._stop:
                        return
                    self._admit()
                    batch = self._select()
                tick_s = self._tick(batch) if batch else None
                self._toy_turn(tick_s)

    def _admit(self) -> None:
        for job in [j for j in self._live if j.cancel_requested]:
            self._leave(job)
            self._finish(job, "cancelled")
        while self._pending and len(self._live) < self.max_active:
            job = self._pending.popleft()
            try:  # x_T (or the start image repeated to n) on this thread: see the module's rule
                job.lane = self.stepper.start_run(job.run)
            except Exception as e:
                self._finish(job, "error", f"could not start: {e}")
                continue
            job.status, job.started = "running", time.monotonic()
            labels = job.run.drawn_labels
            job.log.put(Started(job.plan.K, job.n, job.seed, None if labels is None else tuple(labels),
                                job.run.spec.guidance))
            self._live.append(job)
        for i, job in enumerate(self._pending):
            if job.position_sent != i + 1:  # only when it moved: a long queue would otherwise log one event per tick
                job.position_sent = i + 1
                job.log.put(Queued(i + 1))
        self._update_gauges()

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

    def _tick(self, jobs: list[Job]) -> float:
        """One step of ``jobs``; the seconds it took."""
        t0 = time.perf_counter()
        lanes = [j.lane for j in jobs]
        assert all(lane is not None for lane in lanes)
        # Drawn before the step, on the generators' own device, so that a batch that fails (say, out of
        # memory) is retried job by job with the same noise and every seed still gives its images.
        noise = [lane.draw_noise() for lane in lanes]  # type: ignore[union-attr]
        try:
            stepped = list(zip(jobs, self.stepper.advance(lanes, noise), strict=True))  # type: ignore[arg-type]
        except Exception:  # advance raises before any lane has changed, so each job can take this step alone
            stepped = []
            for job, job_noise in zip(jobs, noise, strict=True):
                try:
                    frames = self.stepper.advance([job.lane], [job_noise])  # type: ignore[list-item]
                    stepped.append((job, frames[0]))
                except SpecError as e:  # the request's own limit (an adaptive run's evaluations), not a fault
                    self._leave(job)
                    job.error_field = e.field
                    self._finish(job, "error", e.message)
                except Exception as e:
                    log.exception("job %s failed", job.id)
                    self._leave(job)
                    self._finish(job, "error", f"sampling failed: {type(e).__name__}: {e}")
        self._report(stepped)
        seconds = time.perf_counter() - t0
        self.metrics.batch_size.observe(sum(j.n for j in jobs))
        self.metrics.step_seconds.observe(seconds)
        with self._cv:
            self._update_gauges()
        return seconds

    def _toy_turn(self, tick_s: float | None) -> None:
        """The first playground job's turn on this thread. While sampling jobs are live, each tick of ``tick_s``
        seconds earns it ``toy_share / (1 − toy_share)`` of that in credit, and it works only while its credit is
        positive, paying for every unit it runs (training steps, progress samples, its final samples), so sampling
        keeps ``1 − toy_share`` of the thread however long a tick is, and waits at most one unit (a training or
        sampler step). With no sampling job live it works in slices of :data:`TOY_SLICE_S`. Only this thread ends
        the first playground job, cancelled, orphaned or done."""
        if not self._toys:  # the common case, on every tick: no lock taken (a job queued meanwhile waits a tick)
            return
        with self._cv:
            now = time.monotonic()
            for job in list(self._toys):
                orphaned = not job.readers and now - max(job.created, job.left or 0.0) > self.toy_orphan_s
                if job.cancel_requested or orphaned:
                    self._end_toy(job, "cancelled")
            job = self._toys[0] if self._toys else None
            if job is not None and job.units is None:
                job.units = toy.units(job)
                job.status, job.started = "running", time.monotonic()
                self._renumber_toys()
        if tick_s is None:
            self._toy_credit = 0.0  # nobody samples: nothing is owed
        else:
            self._toy_credit = min(TOY_SLICE_S, self._toy_credit + tick_s * self.toy_share / (1.0 - self.toy_share))
        if job is None or (tick_s is not None and self._toy_credit <= 0):
            return
        t0 = time.perf_counter()
        error = None
        try:
            finished = toy.work(job, TOY_SLICE_S if tick_s is None else self._toy_credit)
        except Exception as e:
            log.exception("playground job %s failed", job.id)
            finished, error = True, f"training failed: {type(e).__name__}: {e}"
        spent = time.perf_counter() - t0
        self.metrics.toy_seconds.inc(spent)
        if tick_s is not None:
            self._toy_credit -= spent
        if finished:
            with self._cv:
                self._end_toy(job, "error" if error else "done", error)

    def _end_toy(self, job: ToyJob, status: JobStatus, error: str | None = None) -> None:
        """Callers hold ``_cv``: take ``job`` out of the playground queue, drop its model and end it."""
        self._toys.remove(job)
        job.units = None  # closing its work lets its model go
        self._finish(job, status, error)
        self._renumber_toys()

    def _renumber_toys(self) -> None:
        """Callers hold ``_cv``: a ``queued`` event to each waiting playground job whose place changed."""
        for i, job in enumerate(self._toys):
            if job.status == "queued" and job.position_sent != i:
                job.position_sent = i
                job.log.put(Queued(i))

    def _report(self, stepped: list[tuple[Job, SampleFrame]]) -> None:
        """Each stepped job's frame when it is due, and its images at its last step."""
        for job, frame in stepped:
            job.step, job.of = frame.step, frame.of
            last = frame.last
            if last:
                self._leave(job)
            if not (last or frame.step % job.frame_every == 0):
                continue
            try:
                # Host copies are the only work here (on a GPU, where a failed step's error surfaces); the
                # job's log encodes them on the encoder thread.
                x_t, x0 = frame.x_t.detach().to("cpu", copy=True), frame.x0.detach().to("cpu", copy=True)
                self._emit(job, Frame(frame.step, frame.of, frame.t, x_t, x0))
            except Exception as e:  # a lost intermediate frame is skipped; a lost last one ends the job
                log.exception("job %s: frame %d could not be sent", job.id, frame.step)
                if last:
                    self._finish(job, "error", f"the last frame could not be sent: {type(e).__name__}: {e}")
                continue
            if last:
                self._complete(job, x_t)

    def _complete(self, job: Job, images: Tensor) -> None:
        """Log the job's images; it is done once they are encoded (or failed, if they cannot be)."""
        elapsed = round(job.elapsed_ms or 0.0, 1)

        def logged(failure: str | None) -> None:  # on the encoder thread
            if failure is None:
                self._finish(job, "done")
            else:
                self._finish(job, "error", failure)

        job.log.put(Done(images, job.seed, elapsed, job.step), on_logged=logged)

    def _emit(self, job: Job, result: Result) -> None:
        job.log.put(result)

    def _leave(self, job: Job) -> None:
        """Take ``job`` out of the rotation and drop its state (the worker thread's to do: it owns the lane)."""
        with self._cv:
            if job in self._live:
                self._live.remove(job)
        job.lane = None

    def _finish(self, job: BaseJob, status: JobStatus, error: str | None = None) -> None:
        """End ``job`` and log its terminal result (a done job's images are in its log already)."""
        with self._cv:  # re-entrant: some callers hold it already
            if job.done:
                return
            job.status, job.error, job.finished = status, error, time.monotonic()
            self._finished.append(job)
        if status == "cancelled":
            job.log.put(Cancelled(job.step))
        elif status == "error":  # a log that an encoding failure already closed keeps that Failed
            job.log.put(Failed(error or "failed"))
        self.metrics.jobs.labels(outcome=status).inc()

    def _gc(self) -> None:
        """Forget finished jobs ``job_ttl_s`` after they finished or their last reader left, whichever is
        later, and the oldest beyond ``max_finished``; never one that a stream is reading (callers hold ``_cv``).

        Each finished job keeps up to ``event_buffer`` frames for Last-Event-ID replays, so the count is
        capped as well as the age: a client that creates and cancels jobs in a loop cannot grow memory."""
        now = time.monotonic()
        idle = [j for j in self._finished if not j.readers]  # oldest first
        over = len(self._finished) - self.max_finished
        for job in idle:
            expired = now - max(job.finished or now, job.left or 0.0) > self.job_ttl_s
            if over > 0 or expired:
                self._finished.remove(job)
                self.jobs.pop(job.id, None)
                over -= 1

