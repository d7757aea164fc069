"""Frames for the wire, the frame-encoder thread, and each job's replay log.

The worker reports tensors (:mod:`app.runtime.results`) and goes back to the model at once. A job's
:class:`JobLog` hands its frames and its final images to the one :class:`FrameEncoder` thread, which turns
them into uint8 grids, encodes them in the job's frame format (PNG data URLs or raw pixels) and appends
them to the log, in the order the worker reported them. A log keeps every result except intermediate
frames, of which it keeps only the newest ``buffer``: a slow client skips frames (the latest wins) and
never holds up the worker or another job. Readers (the SSE and REST routes) follow the log.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from torch import Tensor

from engine import make_grid, png_bytes, to_uint8_array

from .results import TERMINAL, Done, Failed, Frame, Result, ToyProgress

log = logging.getLogger(__name__)
FrameFormat = Literal["png", "raw"]


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def grid(x: Tensor, value_range: tuple[float, float], columns: int | None = None) -> np.ndarray:
    """A CPU ``(N, C, H, W)`` batch as one uint8 ``(H', W', C)`` grid, ``columns`` images to a row (default ⌈√N⌉)."""
    return make_grid(to_uint8_array(x, value_range), columns)


def grid_png(x: Tensor, value_range: tuple[float, float]) -> bytes:
    """PNG of a CPU ``(N, C, H, W)`` batch tiled into a grid."""
    return png_bytes(grid(x, value_range))


def encode_image(pixels: np.ndarray, fmt: FrameFormat) -> str:
    """A uint8 ``(H, W, C)`` image as a PNG data URL (``png``) or the base64 of its bytes, row-major (``raw``)."""
    if fmt == "png":
        return data_url(png_bytes(pixels))
    return base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode("ascii")


@dataclass(frozen=True)
class FramePixels:
    """A :class:`~app.runtime.results.Frame` as the wire carries it: both grids ``(H, W, C)`` uint8, encoded."""

    step: int
    of: int
    t: int
    shape: tuple[int, int, int]  # the grids' (H, W, C)
    format: FrameFormat
    xt: str
    x0: str

    @property
    def last(self) -> bool:
        return self.step == self.of


@dataclass(frozen=True)
class Images:
    """A :class:`~app.runtime.results.Done` as the wire carries it: one PNG per image and the grid of all."""

    pngs: list[bytes]
    grid: bytes
    seed: int
    elapsed_ms: float
    evaluations: int


#: What a log holds: the worker's results, with frames and final images in their wire form.
Logged = Result | FramePixels | Images


def encode(result: Result, fmt: FrameFormat, value_range: tuple[float, float], columns: int | None = None) -> Logged:
    """``result`` in its wire form (frames and final images encoded, grids ``columns`` wide; other results as
    they are)."""
    if isinstance(result, Frame):
        xt, x0 = grid(result.x_t, value_range, columns), grid(result.x0, value_range, columns)
        return FramePixels(result.step, result.of, result.t, xt.shape, fmt, encode_image(xt, fmt),
                           encode_image(x0, fmt))
    if isinstance(result, Done):
        u8 = to_uint8_array(result.images, value_range)
        return Images([png_bytes(u8[i]) for i in range(u8.shape[0])], png_bytes(make_grid(u8, columns)), result.seed,
                      result.elapsed_ms, result.evaluations)
    return result


@dataclass(frozen=True)
class Event:
    seq: int  # position in the log, for cursors
    result: Logged


def _droppable(result: Logged) -> bool:
    """Intermediate frames and a playground's progress: a slow client skips them, the latest wins."""
    return (isinstance(result, FramePixels) and not result.last) or isinstance(result, ToyProgress)


def _terminal(result: Logged) -> bool:
    return isinstance(result, (*TERMINAL, Images))


@dataclass
class EventLog:
    """Append-only results of one job, readable from asyncio tasks while threads write."""

    buffer: int
    on_drop: Callable[[int], None] = lambda n: None
    _kept: list[Event] = field(default_factory=list)
    _frames: deque[Event] = field(default_factory=deque)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)
    closed: bool = False

    def append(self, result: Logged) -> bool:
        """Log ``result``; a terminal result closes the log, and nothing is logged after it (False)."""
        with self._lock:
            if self.closed:  # e.g. a frame the encoder finishes after the job was cancelled: the log is final
                return False
            ev = Event(next(self._seq), result)
            if _droppable(result):
                self._frames.append(ev)
                while len(self._frames) > self.buffer:
                    self._frames.popleft()
            else:
                self._kept.append(ev)
            self.closed = _terminal(result)
            waiters = list(self._waiters)
        for loop, flag in waiters:
            loop.call_soon_threadsafe(flag.set)
        return True

    def since(self, seq: int) -> list[Event]:
        """Events after cursor ``seq``, in order."""
        return self._since(seq)[0]

    def _since(self, seq: int) -> tuple[list[Event], bool]:
        """Events after ``seq`` and whether the log was closed, read together: a reader that saw nothing
        new and then checked ``closed`` separately could miss a terminal result appended in between."""
        with self._lock:
            evs = [e for e in self._kept if e.seq > seq] + [e for e in self._frames if e.seq > seq]
            closed = self.closed
        return sorted(evs, key=lambda e: e.seq), closed

    async def follow(self, cursor: int = 0, timeout: float = 15.0) -> AsyncIterator[Event | None]:
        """Yield events after ``cursor`` as they arrive, until the log closes.

        Frames evicted before this reader got to them are counted as dropped. Yields ``None``
        when ``timeout`` passes with nothing new (callers use it to check for disconnects).
        """
        loop = asyncio.get_running_loop()
        flag = asyncio.Event()
        token = (loop, flag)
        with self._lock:
            self._waiters.add(token)
        try:
            while True:
                flag.clear()
                evs, closed = self._since(cursor)
                if evs:
                    skipped = (evs[-1].seq - cursor) - len(evs)  # sequence gaps are evicted frames
                    if skipped:
                        self.on_drop(skipped)
                    for e in evs:
                        cursor = e.seq
                        yield e
                    continue
                if closed:
                    return
                try:
                    await asyncio.wait_for(flag.wait(), timeout)
                except TimeoutError:
                    yield None
        finally:
            with self._lock:
                self._waiters.discard(token)


class JobLog(EventLog):
    """One job's log, fed by the worker: :meth:`put` encodes frames and final images on the encoder thread.

    Results are logged in the order they were put. A result with nothing to encode is appended at once
    when nothing of this job is still being encoded, so a job's state reads the same on every thread.
    """

    def __init__(self, fmt: FrameFormat, buffer: int, encoder: FrameEncoder, value_range: tuple[float, float],
                 on_drop: Callable[[int], None] = lambda n: None, columns: int | None = None) -> None:
        super().__init__(buffer, on_drop)
        self.format, self.encoder, self.value_range, self.columns = fmt, encoder, value_range, columns
        self._pending = 0
        self._order = threading.Lock()

    def put(self, result: Result, on_logged: Callable[[str | None], None] | None = None) -> None:
        """Log ``result`` after what was put before it. ``on_logged`` hears, on the encoder thread, None once a
        :class:`~app.runtime.results.Done` is logged, or why the job's images could not be.

        Each job has one writer (the worker thread), which keeps a job's results in the order it put them."""
        with self._order:
            if not self._pending and not isinstance(result, Frame | Done):
                self.append(result)
                return
            self._pending += 1
        self.encoder.submit(lambda: self._encode(result, on_logged))

    def _encode(self, result: Result, on_logged: Callable[[str | None], None] | None) -> None:
        failure = None
        try:
            logged: Logged | None = encode(result, self.format, self.value_range, self.columns)
        except Exception as e:  # a lost intermediate frame is skipped; losing the result ends the job
            log.exception("encoding a %s failed", type(result).__name__)
            failure = f"encoding the result failed: {type(e).__name__}: {e}"
            logged = Failed(failure) if isinstance(result, Done) or (isinstance(result, Frame) and result.last) \
                else None
        with self._order:
            self._pending -= 1
            ok = logged is not None and self.append(logged)
        if on_logged is not None:
            on_logged(None if ok and failure is None else failure or "the job's log closed before its images")

    def final(self) -> Images | None:
        """The job's images once it is done, else None."""
        done = [e.result for e in self.since(0) if isinstance(e.result, Images)]
        return done[0] if done else None


class FrameEncoder:
    """One background thread that runs frame work in submission order."""

    def __init__(self) -> None:
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="frame-encoder", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self._q.put(fn)

    def _run(self) -> None:
        while True:
            fn = self._q.get()
            if fn is None:
                self._q.task_done()
                return
            try:
                fn()
            except Exception:  # an encoding failure must not kill the thread that serves every job
                log.exception("frame encoding failed")
            finally:
                self._q.task_done()

    def drain(self) -> None:
        """Wait until everything submitted so far has run."""
        self._q.join()

    def close(self, timeout: float = 5.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)
