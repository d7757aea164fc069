"""Frame pixels for the wire, the frame-encoder thread, and the per-job logs of results that streams read.

The worker hands host copies to :class:`FrameEncoder` and goes back to the model at once; the encoder
thread tiles them into uint8 grids, encodes them in the job's frame format and appends the
:class:`~app.results.Frame` to the job's :class:`EventLog`. A log keeps every result except
intermediate frames, of which it keeps only the newest ``buffer``: a slow client skips frames (the
latest wins) and never holds up the worker or another job.
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

from engine.io.images import make_grid, png_bytes, to_uint8_array

from .results import TERMINAL, Frame, Result

log = logging.getLogger(__name__)
FrameFormat = Literal["png", "raw"]
FRAME_FORMATS: tuple[FrameFormat, ...] = ("png", "raw")


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def grid(x: Tensor, value_range: tuple[float, float]) -> np.ndarray:
    """A CPU ``(N, C, H, W)`` batch as one uint8 ``(H', W', C)`` grid."""
    return make_grid(to_uint8_array(x, value_range))


def grid_png(x: Tensor, value_range: tuple[float, float]) -> bytes:
    """PNG of a CPU ``(N, C, H, W)`` batch tiled into a grid."""
    return png_bytes(grid(x, value_range))


def encode_image(pixels: np.ndarray, fmt: FrameFormat) -> str:
    """A uint8 ``(H, W, C)`` image as a PNG data URL (``png``) or the base64 of its bytes, row-major (``raw``)."""
    if fmt == "png":
        return data_url(png_bytes(pixels))
    return base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode("ascii")


def encode_frame(frame: Frame, fmt: FrameFormat) -> tuple[str, str]:
    """``(x_t, x0)`` of ``frame`` in ``fmt``, encoded once: the encoder thread does it before any reader asks."""
    cache = frame.encoded
    hit = cache.get(fmt)
    if hit is None:
        hit = cache[fmt] = (encode_image(frame.x_t, fmt), encode_image(frame.x0, fmt))
    return hit


@dataclass(frozen=True)
class Event:
    seq: int  # position in the log, for cursors
    result: Result


def _droppable(result: Result) -> bool:
    return isinstance(result, Frame) and not result.last


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

    def append(self, result: Result) -> None:
        """Log ``result``; a terminal result closes the log, and nothing is logged after it."""
        with self._lock:
            if self.closed:  # e.g. a frame the encoder finishes after the job was cancelled: the log is final
                return
            ev = Event(next(self._seq), result)
            if _droppable(result):
                self._frames.append(ev)
                while len(self._frames) > self.buffer:
                    self._frames.popleft()
            else:
                self._kept.append(ev)
            self.closed = isinstance(result, TERMINAL)
            waiters = list(self._waiters)
        for loop, flag in waiters:
            loop.call_soon_threadsafe(flag.set)

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
                return
            try:
                fn()
            except Exception:  # an encoding failure must not kill the thread that serves every job
                log.exception("frame encoding failed")

    def close(self, timeout: float = 5.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)
