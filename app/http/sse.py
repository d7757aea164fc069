"""The wire format of a job's events: worker results → SSE ids, event names and JSON payloads.

Ids are the step index: 0 for ``queued`` and ``started``, the step for a ``frame``, and K + 1 for the
terminal event (``done``, ``cancelled`` or ``error``), so a client that reconnects with Last-Event-ID
gets everything it has not seen. A playground job's are alike: 0 for ``queued`` and ``toy_started``, the
training step for ``toy_progress``, and the last training step + 1 for its terminal event (``toy_done``,
``cancelled`` or ``error``). The payloads are the models in :mod:`app.http.schemas`, and
:func:`document_events` lists them in the OpenAPI of the SSE routes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
from fastapi import Request
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from torch import Tensor

from ..runtime.frames import Event, FramePixels, Images, Logged, data_url
from ..runtime.jobs import BaseJob
from ..runtime.results import TERMINAL, Cancelled, Failed, Queued, Started, ToyDone, ToyProgress, ToyStarted
from ..state import AppState
from .schemas import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    FrameEvent,
    QueuedEvent,
    StartedEvent,
    ToyDoneEvent,
    ToyProgressEvent,
    ToyStartedEvent,
)

SHUTTING_DOWN = "the server is shutting down"
SHUTDOWN_GRACE_S = 3.0  # streams get this long to say goodbye; uvicorn's own graceful timeout is longer (5 s)

# Event name and payload model of each result type; static/events.js names the same events for the page.
EVENTS: dict[type, tuple[str, type[BaseModel]]] = {
    Queued: ("queued", QueuedEvent),
    Started: ("started", StartedEvent),
    FramePixels: ("frame", FrameEvent),
    Images: ("done", DoneEvent),
    Cancelled: ("cancelled", CancelledEvent),
    Failed: ("error", ErrorEvent),
    ToyStarted: ("toy_started", ToyStartedEvent),
    ToyProgress: ("toy_progress", ToyProgressEvent),
    ToyDone: ("toy_done", ToyDoneEvent),
}


def event_id(result: Logged, job: BaseJob) -> int:
    """The SSE id of ``result`` in ``job``."""
    if isinstance(result, FramePixels | ToyProgress):
        return result.step
    return job.terminal_id if isinstance(result, (*TERMINAL, Images)) else 0


def payload(result: Logged, job: BaseJob) -> BaseModel:
    """The JSON body of ``result``'s event (frames as the job's log encoded them)."""
    match result:
        case Queued(position):
            return QueuedEvent(id=job.id, position=position)
        case Started(steps, n, seed, labels, guidance):
            return StartedEvent(id=job.id, steps=steps, n=n, seed=seed,
                                labels=None if labels is None else list(labels), guidance=guidance)
        case FramePixels(step, of, t, (h, w, c), fmt, xt, x0):
            return FrameEvent(step=step, of=of, t=t, format=fmt, width=w, height=h, channels=c, xt=xt, x0=x0)
        case Images(pngs, _, seed, elapsed_ms, evaluations):
            return DoneEvent(images=[data_url(p) for p in pngs], seed=seed, elapsed_ms=elapsed_ms,
                             evaluations=evaluations)
        case Cancelled(step):
            return CancelledEvent(step=step)
        case Failed(message):
            return ErrorEvent(message=message)
        case ToyStarted(data):
            return ToyStartedEvent.model_construct(data=as_points(data))
        case ToyProgress(step, loss, seconds, points):
            return ToyProgressEvent.model_construct(step=step, loss=loss, seconds=seconds, points=as_points(points))
        case ToyDone():
            # built, not validated: some 30,000 numbers the worker made, checked by the tests against the schema
            fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
            return ToyDoneEvent.model_construct(**{k: as_points(v) if isinstance(v, Tensor) else v
                                                   for k, v in fields.items()})
    raise TypeError(f"not a worker result: {result!r}")


def as_points(x: Tensor) -> list:
    """Points ``(..., 2)`` (the worker's host copies) as nested lists, rounded to 1e-4 (finer than the page draws,
    and a third of the JSON). With NumPy: a torch op here would give this thread an OpenMP team of its own (see
    app.runtime.worker)."""
    return np.round(x.numpy().astype(np.float64), 4).tolist()


def to_sse(result: Logged, job: BaseJob) -> ServerSentEvent:
    name, _ = EVENTS[type(result)]
    return ServerSentEvent(data=payload(result, job).model_dump_json(), event=name, id=str(event_id(result, job)))


def cursor_after(job: BaseJob, last_id: int) -> int:
    """The log cursor that replays every event with an SSE id above ``last_id`` (Last-Event-ID)."""
    seen = [e.seq for e in job.log.since(0) if event_id(e.result, job) <= last_id]
    return max(seen, default=0)


async def _events(request: Request, st: AppState, job: BaseJob, last_id: int | None, cancel_on_disconnect: bool,
                  shutdown: anyio.Event) -> AsyncIterator[ServerSentEvent]:
    cursor = cursor_after(job, last_id) if last_id is not None else 0
    st.sse_clients.inc()  # a stream whose task leaks would keep this above zero forever
    st.worker.attach(job)
    try:
        # The short timeout bounds how long a quiet stream takes to notice a disconnect or a shutdown.
        ev: Event | None
        async for ev in job.log.follow(cursor, timeout=1.0):
            if shutdown.is_set():
                yield ServerSentEvent(data=ErrorEvent(message=SHUTTING_DOWN).model_dump_json(),
                                      event=EVENTS[Failed][0])
                return
            if await request.is_disconnected():
                break
            if ev is not None:
                yield to_sse(ev.result, job)
    finally:
        st.sse_clients.dec()
        st.worker.detach(job)
        if cancel_on_disconnect and not job.done:
            st.worker.cancel(job.id)


def event_stream(request: Request, st: AppState, job: BaseJob, last_id: int | None,
                 cancel_on_disconnect: bool) -> EventSourceResponse:
    """``job``'s events from after ``last_id``; on SIGTERM the stream ends with an ``error`` event, not a cut."""
    shutdown = anyio.Event()
    return EventSourceResponse(_events(request, st, job, last_id, cancel_on_disconnect, shutdown), ping=10,
                               shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S)


#: The events a sampling job sends (a playground job sends ``queued``, ``cancelled``, ``error`` and the ``toy_`` ones).
SAMPLING_EVENTS = ("queued", "started", "frame", "done", "cancelled", "error")


def responses(names: tuple[str, ...]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an SSE route that sends the events ``names``."""
    models = {name: model for name, model in EVENTS.values() if name in names}
    return {200: {"description": "server-sent events: " + ", ".join(models)
                                 + "; each event's JSON payload is the schema named in `x-events`",
                  "content": {"text/event-stream": {
                      "x-events": {name: {"$ref": f"#/components/schemas/{model.__name__}"}
                                   for name, model in models.items()}}}}}


def document_events(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an OpenAPI dict, changed in place) with every event payload model among its components."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for _, model in EVENTS.values():
        comps[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema
