"""HTTP and SSE routes (prefix /api/v1), health, metrics and the page."""

from __future__ import annotations

import base64
import io
import json
import secrets
from collections import OrderedDict
from typing import Annotated, Any

import anyio
import numpy as np
import torch
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from engine import NoiseSchedule, SamplingPlan
from engine.io.images import center_crop_resize, from_uint8

from .frames import data_url, grid_png
from .schemas import (
    ErrorResponse,
    JobCreated,
    JobRequest,
    JobState,
    NoiseResponse,
    SampleRequest,
    SamplesResponse,
    ValidationErrorResponse,
)
from .worker import Job, QueueFull, SamplingWorker, on_a_thread_that_exits

api = APIRouter(prefix="/api/v1")
SHUTTING_DOWN = "the server is shutting down"
SHUTDOWN_GRACE_S = 3.0  # streams get this long to say goodbye; uvicorn's own graceful timeout is longer (5 s)
root = APIRouter()
# Every status a route can answer is declared with its body, so clients (and the schemathesis suite) can rely on it.
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "a JSON body that is not valid UTF-8, or malformed multipart"},
    413: {"model": ErrorResponse, "description": "the request body is larger than the server accepts"},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorResponse, "description": "a field is out of range; `loc` names it"},
    429: {"model": ErrorResponse, "description": "queue full; retry after Retry-After seconds"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such job (finished jobs are forgotten after a while)"}}
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}},
          "description": "events: queued, started, frame, done, cancelled, error"}}


def _state(request: Request) -> Any:
    return request.app.state


def _invalid(field: str, msg: str, value: Any, where: str = "body") -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": (where, field), "msg": msg, "input": value}])


def _plan_for(request: Request, req: SampleRequest) -> tuple[SamplingPlan, torch.Tensor | None]:
    st = _state(request)
    worker: SamplingWorker = st.worker
    T = st.model.diffusion.T
    if req.n > worker.max_batch:
        raise _invalid("n", f"n must be ≤ {worker.max_batch} (the server's max batch)", req.n)
    x_start, start_t = None, None
    if req.init is not None:
        init = st.noised.get(req.init)
        if init is None:
            raise _invalid("init", "unknown or expired init id; POST /api/v1/noise again", req.init)
        x_start, start_t = init  # one image; the worker repeats it n times, on its own thread (see app.worker)
    t_max = T - 1 if start_t is None else start_t
    if req.steps > t_max + 1:
        limit = f"T = {T} of this model" if start_t is None else f"the init image's t = {start_t}, plus 1"
        raise _invalid("steps", f"steps must be ≤ {t_max + 1} ({limit})", req.steps)
    return SamplingPlan.build(st.model.diffusion, req.sampler, req.steps, req.eta, start_t), x_start


def _submit(request: Request, req: SampleRequest, frame_every: int) -> Job:
    plan, x_start = _plan_for(request, req)
    seed = req.seed if req.seed is not None else secrets.randbelow(2**53)
    frame_every = max(frame_every, _state(request).settings.frame_every_min)  # the operator's cap on frame rate
    try:
        return _state(request).worker.submit(req.n, plan, seed, frame_every, req.clip, req.sampler, x_start)
    except QueueFull as e:
        raise HTTPException(429, str(e), headers={"Retry-After": "2"}) from None


def _job_state(worker: SamplingWorker, job: Job) -> JobState:
    return JobState(id=job.id, state=job.status, step=job.step, of=job.plan.K, n=job.n, sampler=job.sampler,
                    seed=job.seed, position=worker.position(job), elapsed_ms=job.elapsed_ms, error=job.error)


async def _sse(request: Request, job: Job, last_id: int | None, cancel_on_disconnect: bool, shutdown: anyio.Event):
    cursor = job.events.after_sse_id(last_id) if last_id is not None else 0
    open_streams = _state(request).worker.metrics.sse_clients
    open_streams.inc()  # a stream whose task leaks would keep this above zero forever
    try:
        # The short timeout bounds how long a quiet stream takes to notice a disconnect or a shutdown.
        async for ev in job.events.follow(cursor, timeout=1.0):
            if shutdown.is_set():
                yield ServerSentEvent(data=json.dumps({"message": SHUTTING_DOWN}), event="error")
                return
            if await request.is_disconnected():
                break
            if ev is None:
                continue
            yield ServerSentEvent(data=json.dumps(ev.data), event=ev.event, id=str(ev.id))
    finally:
        open_streams.dec()
        if cancel_on_disconnect and not job.done:
            _state(request).worker.cancel(job.id)


def _event_stream(request: Request, job: Job, last_id: int | None, cancel_on_disconnect: bool) -> EventSourceResponse:
    """An SSE response that, on SIGTERM, ends with an ``error`` event instead of a cut connection."""
    shutdown = anyio.Event()
    return EventSourceResponse(_sse(request, job, last_id, cancel_on_disconnect, shutdown), ping=10,
                               shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S)


# ------------------------------------------------------------------------------ model facts
@api.get("/model", summary="facts about the loaded model")
def get_model(request: Request) -> dict[str, Any]:
    return _state(request).model_info


@api.get("/schedule", summary="β, ᾱ and SNR per t, with linear and cosine for comparison")
def get_schedule(request: Request) -> dict[str, Any]:
    return _state(request).schedule_info


def schedule_info(s: NoiseSchedule, name: str) -> dict[str, Any]:
    lin, cos = NoiseSchedule.linear(s.T), NoiseSchedule.cosine(s.T)
    return {
        "T": s.T, "name": name, "betas": s.betas.tolist(), "alpha_bars": s.alpha_bars.tolist(),
        "snr": s.snr.tolist(),
        "compare": {k: {"alpha_bars": v.alpha_bars.tolist(), "snr": v.snr.tolist()}
                    for k, v in (("linear", lin), ("cosine", cos))},
    }


# ------------------------------------------------------------------------------ sampling
@api.post("/samples", summary="sample and wait; a PNG grid for Accept: image/png, else JSON",
          response_model=SamplesResponse, responses={
              **ERRORS, **BODY_ERRORS, 200: {"content": {"image/png": {}}},
              409: {"model": ErrorResponse, "description": "the job was cancelled"},
              503: {"model": ErrorResponse, "description": "the job failed or the server is shutting down"}})
async def post_samples(request: Request, req: SampleRequest) -> Any:
    job = _submit(request, req, frame_every=10**9)
    try:
        async for _ in job.events.follow(0, timeout=5.0):
            if await request.is_disconnected():
                break
    finally:
        if not job.done:
            _state(request).worker.cancel(job.id)
    if job.status != "done" or not job.result or job.grid_png is None:
        raise HTTPException(409 if job.status == "cancelled" else 503, job.error or f"job {job.status}")
    grid = job.grid_png
    if "image/png" in request.headers.get("accept", ""):
        return Response(grid, media_type="image/png", headers={"X-Seed": str(job.seed)})
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return SamplesResponse(images=[b64(p) for p in job.result], grid=b64(grid), seed=job.seed,
                           elapsed_ms=round(job.elapsed_ms or 0.0, 1))


@api.post("/jobs", status_code=202, response_model=JobCreated, summary="start a job; stream it from /events",
          responses={**ERRORS, **BODY_ERRORS})
def post_job(request: Request, req: JobRequest) -> JobCreated:
    job = _submit(request, req, req.frame_every)
    return JobCreated(id=job.id, position=_state(request).worker.position(job))


def _get_job(request: Request, job_id: str) -> Job:
    job = _state(request).worker.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (finished jobs are kept for a while, then forgotten)")
    return job


@api.get("/jobs/{job_id}", response_model=JobState, summary="a job's state", responses=NOT_FOUND)
def get_job(request: Request, job_id: str) -> JobState:
    return _job_state(_state(request).worker, _get_job(request, job_id))


@api.delete("/jobs/{job_id}", response_model=JobState, summary="cancel this job only", responses=NOT_FOUND)
def delete_job(request: Request, job_id: str) -> JobState:
    job = _get_job(request, job_id)
    _state(request).worker.cancel(job_id)
    return _job_state(_state(request).worker, job)


@api.get("/jobs/{job_id}/events", summary="the job's server-sent events; honours Last-Event-ID",
         response_class=EventSourceResponse, responses={**SSE, **NOT_FOUND, 422: ERRORS[422]})
async def job_events(request: Request, job_id: str,
                     last_event_id: Annotated[int | None, Query(alias="lastEventId", ge=0)] = None):
    job = _get_job(request, job_id)
    header = request.headers.get("last-event-id")
    if header is not None:
        try:
            last_event_id = int(header)
        except ValueError:
            last_event_id = -1
        if last_event_id < 0:
            raise _invalid("last-event-id", "must be an integer ≥ 0 (the id of the last event received)", header,
                           where="header")
    return _event_stream(request, job, last_event_id, cancel_on_disconnect=False)


@api.get("/stream", summary="one-shot SSE stream for EventSource; the job is cancelled on disconnect",
         response_class=EventSourceResponse, responses={**SSE, **ERRORS})
async def stream(request: Request, q: Annotated[JobRequest, Query()]):
    job = _submit(request, q, q.frame_every)
    return _event_stream(request, job, None, cancel_on_disconnect=True)


# ------------------------------------------------------------------------------ noise your own image
# Only these decoders are tried: Pillow knows about forty formats, some of which (EPS) run external programs.
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


def _decode_upload(data: bytes, max_pixels: int, mode: str, size: int) -> Image.Image:
    """Decode, centre-crop and resize an upload; any failure is the client's file, never a 5xx."""
    try:
        img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except UnidentifiedImageError:
        raise HTTPException(415, f"image: not a recognised image file ({', '.join(UPLOAD_FORMATS)})") from None
    except Image.DecompressionBombError:  # Pillow refuses before we see the size; never decode it
        raise HTTPException(413, f"image: declares more than {max_pixels} pixels (the limit)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise _invalid("image", f"could not be read ({type(e).__name__})", None) from None
    w, h = img.size
    if w * h > max_pixels:
        raise HTTPException(413, f"image: {w}×{h} pixels exceeds the limit of {max_pixels} pixels")
    try:
        img.load()
        return center_crop_resize(img.convert(mode), size)
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise _invalid("image", f"could not be decoded ({type(e).__name__})", None) from None


@api.post("/noise", response_model=NoiseResponse, summary="q(x_t | x0) of an uploaded image",
          responses={400: BODY_ERRORS[400],
                     413: {"model": ErrorResponse, "description": "too many bytes or pixels"},
                     415: {"model": ErrorResponse, "description": "not an image"},
                     429: {"model": ErrorResponse, "description": "too many uploads at once; retry after Retry-After"},
                     422: {"model": ValidationErrorResponse,
                           "description": "bad t, or an image that cannot be decoded; `loc` names the field"}})
async def post_noise(request: Request, image: Annotated[UploadFile, File(description="PNG/JPEG image")],
                     t: Annotated[int, Form(ge=0, description="timestep, 0 ≤ t < T")],
                     seed: Annotated[int, Form(ge=0, le=2**63 - 1)] = 0) -> NoiseResponse:
    st = _state(request)
    m = st.model
    if t >= m.diffusion.T:
        raise _invalid("t", f"t must be < {m.diffusion.T}", t)
    data = await image.read(st.settings.max_upload_bytes + 1)
    if len(data) > st.settings.max_upload_bytes:
        raise HTTPException(413, f"image: more than {st.settings.max_upload_bytes} bytes")
    c, size, _ = m.sample_shape

    def noise_it() -> tuple[torch.Tensor, str, str]:
        try:
            img = _decode_upload(data, st.settings.max_upload_pixels, "L" if c == 1 else "RGB", size)
            arr = np.asarray(img)
            x0 = from_uint8(arr[None, ..., None] if arr.ndim == 2 else arr[None], m.card.value_range)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
            x_t = m.diffusion.q_sample(x0, torch.tensor([t]), noise)
            vr = m.card.value_range
            return x_t, data_url(grid_png(x0, vr)), data_url(grid_png(x_t.clamp(*vr), vr))
        finally:  # here, not in the handler: a cancelled handler must not free the slot while this still runs
            st.noise_slots.release()

    # Each decode may hold ~100 MB at the pixel limit, so only a few run at once.
    if not st.noise_slots.acquire(blocking=False):
        raise HTTPException(429, f"image: {st.settings.max_noise_uploads} uploads are being decoded already "
                                 "(max_noise_uploads)", headers={"Retry-After": "1"})
    x_t, x0_url, xt_url = await on_a_thread_that_exits(noise_it)
    handle = secrets.token_hex(8)
    st.noised[handle] = (x_t, t)
    while len(st.noised) > 256:
        st.noised.popitem(last=False)
    s_ = m.diffusion.schedule
    return NoiseResponse(id=handle, t=t, alpha_bar=float(s_.alpha_bars[t]), snr=float(s_.snr[t]),
                         x0=x0_url, xt=xt_url)


@api.get("/examples", summary="a few images from the model's dataset, as PNG data URLs")
def examples(request: Request, n: Annotated[int, Query(ge=1, le=64)] = 8) -> dict[str, Any]:
    st = _state(request)
    return {"dataset": st.model.card.data.get("dataset"), "images": st.examples[:n]}


# ------------------------------------------------------------------------------ health, metrics, page
@root.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@root.get("/readyz", include_in_schema=False)
def readyz(request: Request) -> JSONResponse:
    worker = getattr(_state(request), "worker", None)
    ok = worker is not None and worker.alive
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@root.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).worker.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@root.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(request: Request) -> HTMLResponse:
    st = _state(request)
    return st.templates.TemplateResponse(request, "index.html", {"model": st.model_info, "defaults": st.defaults})


def new_noised_store() -> OrderedDict[str, tuple[torch.Tensor, int]]:
    return OrderedDict()
