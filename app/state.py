"""The server's state: one typed object, built by the lifespan and read by the routes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, Request
from prometheus_client import Gauge

from engine import LoadedModel, ServerDefaults

from .http.security import ClientJobs
from .runtime.frames import FrameFormat, JobLog
from .runtime.worker import SamplingWorker
from .settings import Settings

MAX_NOISED = 256  # noised uploads kept for "denoise from here"; the oldest is forgotten first


@dataclass
class AppState:
    settings: Settings
    model: LoadedModel
    device: torch.device
    worker: SamplingWorker
    model_info: dict[str, Any]  # GET /model
    schedule_info: dict[str, Any]  # GET /schedule
    defaults: dict[str, Any]  # the page's form
    examples: list[str]  # PNG data URLs of dataset samples, for the page
    noise_slots: threading.BoundedSemaphore  # uploads being decoded at once
    likelihood_slots: threading.BoundedSemaphore  # likelihoods being computed at once
    clients: ClientJobs  # live jobs per client address, for the per-client limit
    sse_clients: Gauge  # open event streams
    noised: OrderedDict[str, tuple[torch.Tensor, int]] = field(default_factory=OrderedDict)  # id → (x_t, t)

    @property
    def sampling_defaults(self) -> ServerDefaults:
        return self.settings.sampling_defaults

    def new_log(self, fmt: FrameFormat, columns: int | None = None, buffer: int | None = None) -> JobLog:
        """A log for a new job, keeping ``buffer`` (default ``event_buffer``) frames for slow clients and
        Last-Event-ID replays; its grids ``columns`` images wide (default ⌈√n⌉)."""
        return JobLog(fmt, buffer or self.settings.event_buffer, self.worker.encoder, self.model.card.value_range,
                      self.worker.metrics.frames_dropped.inc, columns)

    def remember_noised(self, handle: str, x_t: torch.Tensor, t: int) -> None:
        self.noised[handle] = (x_t, t)
        while len(self.noised) > MAX_NOISED:
            self.noised.popitem(last=False)


def install(app: FastAPI, state: AppState) -> None:
    """Make ``state`` the app's; the lifespan does it once the model and the worker are up."""
    app.state.ddpm = state


def current(app: FastAPI) -> AppState | None:
    """The app's state, or ``None`` before its lifespan has started."""
    return getattr(app.state, "ddpm", None)


async def get_state(request: Request) -> AppState:
    """FastAPI dependency: the state of the app serving ``request`` (uvicorn serves only after the lifespan).

    ``async`` only so that FastAPI calls it on the event loop instead of handing it to a worker thread."""
    st = current(request.app)
    if st is None:
        raise RuntimeError("a request arrived before the lifespan installed the app state")
    return st


State = Annotated[AppState, Depends(get_state)]
