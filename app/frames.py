"""Frame encoding off the worker thread, and per-job event logs that SSE clients read.

The worker hands CPU tensors to :class:`FrameEncoder` and returns to the model at once; the encoder
thread turns them into PNG data URLs and appends events to the job's :class:`EventLog`. A log keeps
every control event (queued, started, the final frame, done, …) but only the newest
``buffer`` intermediate frames, so a slow client skips frames (the latest wins) and never holds
up the worker or another job.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from engine.io.images import make_grid, png_bytes, to_uint8_array


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def grid_png(x: Tensor, value_range: tuple[float, float]) -> bytes:
    """PNG of a CPU ``(N, C, H, W)`` batch tiled into a grid."""
    return png_bytes(make_grid(to_uint8_array(x, value_range)))


@dataclass(frozen=True)
class Event:
    seq: int  # position in the log, for cursors
    id: int  # the SSE id: the step index (0 before the first step, K + 1 for terminal events)
    event: str
    data: dict[str, Any]
    keep: bool  # control events are never dropped


@dataclass
class EventLog:
    """Append-only events of one job, readable from asyncio tasks while a thread writes."""

    buffer: int
    on_drop: Callable[[int], None] = lambda n: None
    _control: list[Event] = field(default_factory=list)
    _frames: deque[Event] = field(default_factory=deque)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)
    closed: bool = False

    def append(self, sse_id: int, event: str, data: dict[str, Any], keep: bool = True, close: bool = False) -> None:
        with self._lock:
            if self.closed:  # e.g. a frame the encoder finishes after the job was cancelled: the log is final
                return
            ev = Event(next(self._seq), sse_id, event, data, keep)
            if keep:
                self._control.append(ev)
            else:
                self._frames.append(ev)
                while len(self._frames) > self.buffer:
                    self._frames.popleft()
            self.closed = self.closed or close
            waiters = list(self._waiters)
        for loop, flag in waiters:
            loop.call_soon_threadsafe(flag.set)

    def since(self, seq: int) -> list[Event]:
        """Events after cursor ``seq``, in order."""
        return self._since(seq)[0]

    def _since(self, seq: int) -> tuple[list[Event], bool]:
        """Events after ``seq`` and whether the log was closed, read together: a reader that saw nothing
        new and then checked ``closed`` separately could miss a terminal event appended in between."""
        with self._lock:
            evs = [e for e in self._control if e.seq > seq] + [e for e in self._frames if e.seq > seq]
            closed = self.closed
        return sorted(evs, key=lambda e: e.seq), closed

    def after_sse_id(self, last_id: int) -> int:
        """The cursor that replays everything with an SSE id above ``last_id`` (Last-Event-ID)."""
        with self._lock:
            older = [e.seq for e in (*self._control, *self._frames) if e.id <= last_id]
        return max(older, default=0)

    async def follow(self, cursor: int = 0, timeout: float = 15.0):
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
    """One background thread that PNG-encodes frames in submission order."""

    def __init__(self) -> None:
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="frame-encoder", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self._q.put(fn)

    def backlog(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        while True:
            fn = self._q.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:  # an encoding failure must not kill the thread that serves every job
                import logging

                logging.getLogger(__name__).exception("frame encoding failed")

    def close(self, timeout: float = 5.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)
