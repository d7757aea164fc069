"""HTTP and SSE routes (prefix /api/v1), health, metrics and the page."""

from __future__ import annotations

import base64
import io
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from PIL import Image, UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse

from engine import (
    DEFAULT_TOY_DATASET,
    MAX_SEED,
    ImageLikelihood,
    Inversion,
    NoiseSchedule,
    SamplingRun,
    SamplingSpec,
    SpecError,
    Start,
    image_as_x0,
    image_likelihood,
    interpolation_run,
    invert,
    likelihood_sde,
    resolve,
    steps_limit,
    toy_plan,
)

from ..runtime.frames import FrameFormat, data_url, grid_png
from ..runtime.jobs import BaseJob, Job, QueueFull, ToyJob, ToyOrder
from ..runtime.toy import PROGRESS_KEPT
from ..runtime.worker import SamplingWorker
from ..state import AppState, State, current
from ..threads import on_a_thread_that_exits
from . import sse
from .schemas import (
    INTERPOLATE_FIELDS,
    ErrorResponse,
    InterpolateRequest,
    InvertResponse,
    JobCreated,
    JobRequest,
    JobState,
    LikelihoodResponse,
    NoiseResponse,
    SampleRequest,
    SamplesResponse,
    ToyJobState,
    ToyRequest,
    ValidationErrorResponse,
    spec_of,
)
from .security import JobKind

api = APIRouter(prefix="/api/v1")
root = APIRouter()
APP = Path(__file__).resolve().parent.parent
# The page's templates/ and static/: inside the app package in the image's wheel, beside the packages in a checkout.
WEB = APP if (APP / "templates").is_dir() else APP.parent
TEMPLATES = Jinja2Templates(directory=str(WEB / "templates"))
# Every status a route can answer is declared with its body, so clients (and the schemathesis suite) can rely on it.
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "a JSON body that is not valid UTF-8, or malformed multipart"},
    413: {"model": ErrorResponse, "description": "the request body is larger than the server accepts"},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorResponse, "description": "a field is out of range; `loc` names it"},
    429: {"model": ErrorResponse, "description": "queue full; retry after Retry-After seconds"},
}
#: What every image-upload route may answer besides its own 422 and 429.
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: BODY_ERRORS[400],
    413: {"model": ErrorResponse, "description": "too many bytes or pixels"},
    415: {"model": ErrorResponse, "description": "not an image"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such job (finished jobs are forgotten after a while)"}}


def _invalid(field: str, msg: str, value: Any, where: str = "body") -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": (where, field), "msg": msg, "input": value}])


def _submit(request: Request, st: State, req: SampleRequest, frame_every: int, frame_format: FrameFormat = "png",
            where: str = "body") -> Job:
    """Resolve ``req`` against the model (a 422 names the field it refuses) and queue it."""
    start = None
    if req.init is not None:
        init = st.noised.get(req.init)
        if init is None:
            raise _invalid("init", "unknown or expired init id; POST /api/v1/noise again", req.init, where)
        start = Start(*init)  # one image; the worker repeats it n times, on its own thread (see app.runtime.worker)
    try:
        run = resolve(spec_of(req), st.model, st.sampling_defaults, start, max_n=st.worker.max_batch)
    except SpecError as e:
        raise _invalid(e.field, e.message, e.value, where) from None
    return _enqueue(request, st, run, frame_every, frame_format,
                    columns=run.spec.n if run.rows > 1 else None)  # a guidance grid's rows are its scales


def _enqueue(request: Request, st: AppState, run: SamplingRun, frame_every: int, frame_format: FrameFormat,
             columns: int | None = None) -> Job:
    """Queue a resolved run as the client's job, its grids ``columns`` wide; 429 when the queue is full."""
    frame_every = max(frame_every, st.settings.frame_every_min)  # the operator's cap on frame rate
    return _as_client(request, st, lambda: st.worker.submit(run, frame_every, st.new_log(frame_format, columns)))


def _as_client(request: Request, st: AppState, submit: Callable[[], JobKind]) -> JobKind:
    """``submit()`` under the client's job limit; 429 when the client is at it or the queue is full."""
    try:
        return st.clients.submit(st.clients.client(request), submit)
    except QueueFull as e:
        raise HTTPException(429, str(e), headers={"Retry-After": "2"}) from None


@api.post("/interpolate", status_code=202, response_model=JobCreated,
          summary="a strip between two seeds' x_T, or an inverted image's (and two classes): a job; stream it "
                  "from /jobs/{id}/events",
          responses={**ERRORS, **BODY_ERRORS})
def post_interpolate(request: Request, st: State, req: InterpolateRequest) -> JobCreated:
    spec = SamplingSpec(n=req.k, **{name: getattr(req, name) for name in INTERPOLATE_FIELDS})
    try:
        run = interpolation_run(spec, st.model, _strip_ends(st, req.seeds, req.inits), req.labels,
                                st.sampling_defaults, st.worker.max_batch)
    except SpecError as e:  # the strip's own names: its n is k
        field = "k" if e.field == "n" else e.field
        raise _invalid(field, field + e.message[len(e.field):], e.value) from None
    job = _enqueue(request, st, run, req.frame_every, req.frame_format, columns=req.k)
    return JobCreated(id=job.id, position=st.worker.position(job))


def _strip_ends(st: AppState, seeds: tuple[int | None, int | None],
                inits: tuple[str | None, str | None] | None) -> tuple[int | torch.Tensor, int | torch.Tensor]:
    """Each end of a strip: its seed, or the x_T an inversion left under its init id; 422 unless exactly one."""
    T = st.model.diffusion.T
    ends: list[int | torch.Tensor] = []
    for i, (seed, init) in enumerate(zip(seeds, inits or (None, None), strict=True)):
        if (seed is None) == (init is None):
            raise _invalid("seeds", f"seeds: end {i} needs a seed or an init (inits[{i}]), not both nor neither",
                           list(seeds))
        if init is None:
            ends.append(seed)  # type: ignore[arg-type]
            continue
        held = st.noised.get(init)
        if held is None:
            raise _invalid("inits", "inits: unknown or expired id; POST /api/v1/invert again", init)
        x, t = held
        if t != T - 1:
            raise _invalid("inits", f"inits: {init} is an image noised to t = {t}, not an x_T; the ends take "
                                    "inverted images (POST /api/v1/invert)", init)
        ends.append(x)
    return ends[0], ends[1]


@api.post("/toy/jobs", status_code=202, response_model=JobCreated,
          summary="the 2D playground: train a point denoiser while you watch, then sample it; stream it from "
                  "/jobs/{id}/events", responses={**ERRORS, **BODY_ERRORS})
def post_toy_job(request: Request, st: State, req: ToyRequest) -> JobCreated:
    if req.dataset is not None and req.points is not None:
        raise _invalid("points", "points: give a dataset or points, not both", None)
    if req.seconds > st.settings.max_toy_seconds:
        raise _invalid("seconds", f"seconds must be ≤ {st.settings.max_toy_seconds:g} (max_toy_seconds)", req.seconds)
    try:
        toy_plan(req.sampler, req.steps)
    except SpecError as e:
        raise _invalid(e.field, e.message, e.value) from None
    # A process's first optimiser imports torch._dynamo (about a second): here, not on the worker's thread, where
    # it would stall every sampling job.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    points = None if req.points is None else torch.tensor(req.points, dtype=torch.float32)
    order = ToyOrder(dataset=req.dataset or DEFAULT_TOY_DATASET, points=points, seconds=req.seconds, n=req.n,
                     sampler=req.sampler, steps=req.steps, seed=req.seed)
    job = _as_client(request, st, lambda: st.worker.submit_toy(order, st.new_log("png", buffer=PROGRESS_KEPT)))
    return JobCreated(id=job.id, position=st.worker.position(job))


def _toy_state(worker: SamplingWorker, job: ToyJob) -> ToyJobState:
    return ToyJobState(id=job.id, state=job.status, step=job.step, seconds=round(job.trained_s, 3),
                       of_seconds=job.order.seconds, position=worker.position(job), elapsed_ms=job.elapsed_ms,
                       error=job.error)


def _job_state(worker: SamplingWorker, job: BaseJob) -> JobState | ToyJobState:
    if isinstance(job, ToyJob):
        return _toy_state(worker, job)
    assert isinstance(job, Job)
    return JobState(id=job.id, state=job.status, step=job.step, of=job.of or job.plan.K, n=job.n,
                    sampler=job.plan.sampler,
                    spacing=job.plan.spacing, eta=job.plan.eta, seed=job.seed, position=worker.position(job),
                    labels=job.run.drawn_labels, guidance=job.run.spec.guidance,
                    guidance_interval=job.run.spec.guidance_interval, elapsed_ms=job.elapsed_ms,
                    error=job.error)


# ------------------------------------------------------------------------------ model facts
@api.get("/model", summary="facts about the loaded model")
def get_model(st: State) -> dict[str, Any]:
    return st.model_info


@api.get("/schedule", summary="β, ᾱ and SNR per t, with linear and cosine for comparison")
def get_schedule(st: State) -> dict[str, Any]:
    return st.schedule_info


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
async def post_samples(request: Request, st: State, req: SampleRequest) -> Any:
    job = _submit(request, st, req, frame_every=10**9)
    try:
        async for _ in job.log.follow(0, timeout=5.0):
            if await request.is_disconnected():
                break
    finally:
        if not job.done:
            st.worker.cancel(job.id)
    images = job.log.final()
    if images is None and job.error_field is not None:  # the request's own limit, met while it ran
        raise _invalid(job.error_field, job.error or "", getattr(req, job.error_field, None))
    if images is None:
        raise HTTPException(409 if job.status == "cancelled" else 503, job.error or f"job {job.status}")
    if "image/png" in request.headers.get("accept", ""):
        return Response(images.grid, media_type="image/png", headers={"X-Seed": str(images.seed)})
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return SamplesResponse(images=[b64(p) for p in images.pngs], grid=b64(images.grid), seed=images.seed,
                           elapsed_ms=images.elapsed_ms, evaluations=images.evaluations)


@api.post("/jobs", status_code=202, response_model=JobCreated, summary="start a job; stream it from /events",
          responses={**ERRORS, **BODY_ERRORS})
def post_job(request: Request, st: State, req: JobRequest) -> JobCreated:
    job = _submit(request, st, req, req.frame_every, req.frame_format)
    return JobCreated(id=job.id, position=st.worker.position(job))


def _get_job(st: State, job_id: str) -> BaseJob:
    job = st.worker.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (finished jobs are kept for a while, then forgotten)")
    return job


@api.get("/jobs/{job_id}", response_model=JobState | ToyJobState, summary="a job's state", responses=NOT_FOUND)
def get_job(st: State, job_id: str) -> JobState | ToyJobState:
    return _job_state(st.worker, _get_job(st, job_id))


@api.delete("/jobs/{job_id}", response_model=JobState | ToyJobState, summary="cancel this job only",
            responses=NOT_FOUND)
def delete_job(st: State, job_id: str) -> JobState | ToyJobState:
    job = _get_job(st, job_id)
    st.worker.cancel(job_id)
    return _job_state(st.worker, job)


@api.get("/jobs/{job_id}/events", summary="the job's server-sent events (a sampling or a playground job's); "
                                          "honours Last-Event-ID", response_class=EventSourceResponse,
         responses={**sse.responses(tuple(name for name, _ in sse.EVENTS.values())), **NOT_FOUND, 422: ERRORS[422]})
async def job_events(request: Request, st: State, job_id: str,
                     last_event_id: Annotated[int | None, Query(alias="lastEventId", ge=0)] = None):
    job = _get_job(st, job_id)
    header = request.headers.get("last-event-id")
    if header is not None:
        try:
            last_event_id = int(header)
        except ValueError:
            last_event_id = -1
        if last_event_id < 0:
            raise _invalid("last-event-id", "must be an integer ≥ 0 (the id of the last event received)", header,
                           where="header")
    return sse.event_stream(request, st, job, last_event_id, cancel_on_disconnect=False)


@api.get("/stream", summary="one-shot SSE stream for EventSource; the job is cancelled on disconnect",
         response_class=EventSourceResponse, responses={**sse.responses(sse.SAMPLING_EVENTS), **ERRORS})
async def stream(request: Request, st: State, q: Annotated[JobRequest, Query()]):
    job = _submit(request, st, q, q.frame_every, q.frame_format, where="query")
    return sse.event_stream(request, st, job, None, cancel_on_disconnect=True)


# ------------------------------------------------------------------------------ noise your own image
#: The routes that take an image upload: the body limit allows them the upload size (app/http/limits.py).
UPLOAD_ROUTES = ("/noise", "/likelihood", "/invert")
#: What an upload's work on its thread returns.
Result = TypeVar("Result")
# Only these decoders are tried: Pillow knows about forty formats, some of which (EPS) run external programs.
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


def _decode_upload(data: bytes, max_pixels: int, channels: int, size: int,
                   value_range: tuple[float, float]) -> torch.Tensor:
    """Decode an upload into the model's ``(1, C, H, W)`` input; any failure is the client's file, never a 5xx."""
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
        return image_as_x0(img, channels, size, value_range)
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise _invalid("image", f"could not be decoded ({type(e).__name__})", None) from None


@api.post("/noise", response_model=NoiseResponse, summary="q(x_t | x0) of an uploaded image",
          responses={**UPLOAD_ERRORS,
                     429: {"model": ErrorResponse, "description": "too many uploads at once; retry after Retry-After"},
                     422: {"model": ValidationErrorResponse,
                           "description": "bad t, or an image that cannot be decoded; `loc` names the field"}})
async def post_noise(st: State, image: Annotated[UploadFile, File(description="PNG/JPEG image")],
                     t: Annotated[int, Form(ge=0, description="timestep, 0 ≤ t < T")],
                     seed: Annotated[int, Form(ge=0, le=MAX_SEED)] = 0) -> NoiseResponse:
    m = st.model
    if t >= m.diffusion.T:
        raise _invalid("t", f"t must be < {m.diffusion.T}", t)
    data = await _read_upload(st, image)

    def noise_it() -> tuple[torch.Tensor, str, str]:
        x0 = _upload_as_x0(st, data)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        x_t = m.diffusion.q_sample(x0, torch.tensor([t]), noise)
        vr = m.card.value_range
        return x_t, data_url(grid_png(x0, vr)), data_url(grid_png(x_t.clamp(*vr), vr))

    # Each decode may hold ~100 MB at the pixel limit, so only a few run at once.
    x_t, x0_url, xt_url = await _in_slot(st.noise_slots, f"image: {st.settings.max_noise_uploads} uploads are being "
                                                         "decoded already (max_noise_uploads)", 1, noise_it)
    handle = secrets.token_hex(8)
    st.remember_noised(handle, x_t, t)
    s_ = m.diffusion.schedule
    return NoiseResponse(id=handle, t=t, alpha_bar=float(s_.alpha_bars[t]), snr=float(s_.snr[t]),
                         x0=x0_url, xt=xt_url)


@api.post("/likelihood", response_model=LikelihoodResponse, summary="bits/dim of an uploaded image, by the "
          "probability-flow ODE and by the variational bound",
          responses={**UPLOAD_ERRORS,
                     429: {"model": ErrorResponse, "description": "a likelihood is being computed already; retry "
                                                                  "after Retry-After"},
                     422: {"model": ValidationErrorResponse,
                           "description": "an image that cannot be decoded, or a model without a score-SDE view"}})
async def post_likelihood(st: State, image: Annotated[UploadFile, File(description="PNG/JPEG image")],
                          seed: Annotated[int, Form(ge=0, le=MAX_SEED, description="draws the dequantisation "
                                                                                  "and the trace probes")] = 0
                          ) -> LikelihoodResponse:
    m = st.model
    try:  # before reading the upload: a model without a score-SDE view has no likelihood by the ODE
        likelihood_sde(m.diffusion.schedule)
    except ValueError as e:
        raise _invalid("image", f"this model has no likelihood by the ODE: {e}", None) from None
    data = await _read_upload(st, image)

    def measure() -> tuple[ImageLikelihood | str, str]:
        x0 = _upload_as_x0(st, data)
        try:
            return image_likelihood(m, x0.to(st.device), seed), data_url(grid_png(x0, m.card.value_range))
        except RuntimeError as e:  # the solve failed or ran past its budget on this image
            return str(e), ""

    t0 = time.perf_counter()
    result, x0_url = await _in_slot(st.likelihood_slots, f"image: {st.settings.max_likelihood_jobs} likelihood(s) "
                                                         "being computed already (max_likelihood_jobs)", 5, measure)
    if isinstance(result, str):
        raise _invalid("image", f"image: its likelihood by the ODE could not be computed: {result}", None)
    return LikelihoodResponse(bpd_ode=result.bpd_ode[0], bpd_bound=result.bpd_bound[0],
                              ode_evaluations=result.ode_evaluations, tolerance=result.tolerance, x0=x0_url,
                              elapsed_ms=round((time.perf_counter() - t0) * 1000.0, 1))


@api.post("/invert", response_model=InvertResponse, summary="DDIM inversion of an uploaded image to its x_T",
          responses={**UPLOAD_ERRORS,
                     429: {"model": ErrorResponse, "description": "too many uploads at once; retry after Retry-After"},
                     422: {"model": ValidationErrorResponse,
                           "description": "bad label or steps, or an image that cannot be decoded; `loc` names the "
                                          "field"}})
async def post_invert(st: State, image: Annotated[UploadFile, File(description="PNG/JPEG image")],
                      steps: Annotated[int, Form(ge=1, description="DDIM levels, both ways (at most T)")] = 50,
                      label: Annotated[int | None, Form(ge=0, description="class-conditional models: the image's "
                                                                          "class (default: no label)")] = None
                      ) -> InvertResponse:
    m = st.model
    hi = steps_limit(m.diffusion, "ddim")
    if steps > hi:
        raise _invalid("steps", f"steps must be ≤ {hi} (T of this model)", steps)
    if label is not None and not 0 <= label < m.num_classes:
        raise _invalid("label", f"label must be a class in [0, {m.num_classes - 1}]" if m.num_classes
                       else "label: this model is unconditional", label)
    data = await _read_upload(st, image)

    def invert_it() -> tuple[Inversion, str, str]:
        x0 = _upload_as_x0(st, data)
        inv = invert(m, x0.to(st.device), steps, label, st.device)
        vr = m.card.value_range
        return inv, data_url(grid_png(x0, vr)), data_url(grid_png(inv.reconstruction.cpu(), vr))

    t0 = time.perf_counter()
    inv, x0_url, rec_url = await _in_slot(st.noise_slots, f"image: {st.settings.max_noise_uploads} uploads are being "
                                                          "worked on already (max_noise_uploads)", 1, invert_it)
    handle = secrets.token_hex(8)
    st.remember_noised(handle, inv.x_T.cpu(), m.diffusion.T - 1)
    return InvertResponse(id=handle, steps=steps, psnr=round(float(inv.psnr[0]), 2), x0=x0_url,
                          reconstruction=rec_url, elapsed_ms=round((time.perf_counter() - t0) * 1000.0, 1))


async def _in_slot(slot: threading.BoundedSemaphore, busy: str, retry_after: int, work: Callable[[], Result]) -> Result:
    """``work`` on a thread of its own while it holds a place in ``slot``; 429 saying ``busy`` when none is free.
    The thread frees the place, not the handler: a cancelled handler must not free it while the work still runs."""
    if not slot.acquire(blocking=False):
        raise HTTPException(429, busy, headers={"Retry-After": str(retry_after)})

    def held() -> Result:
        try:
            return work()
        finally:
            slot.release()

    return await on_a_thread_that_exits(held)


async def _read_upload(st: AppState, image: UploadFile) -> bytes:
    """The upload's bytes, refused with 413 beyond the server's byte limit (read no further than it)."""
    data = await image.read(st.settings.max_upload_bytes + 1)
    if len(data) > st.settings.max_upload_bytes:
        raise HTTPException(413, f"image: more than {st.settings.max_upload_bytes} bytes")
    return data


def _upload_as_x0(st: AppState, data: bytes) -> torch.Tensor:
    """An upload decoded, centre-cropped and resized to the model's size, ``(1, C, H, W)`` in its value range."""
    m = st.model
    c, size, _ = m.sample_shape
    return _decode_upload(data, st.settings.max_upload_pixels, c, size, m.card.value_range)


@api.get("/examples", summary="a few images from the model's dataset, as PNG data URLs")
def examples(st: State, n: Annotated[int, Query(ge=1, le=64)] = 8) -> dict[str, Any]:
    return {"dataset": st.model.card.data.get("dataset"), "images": st.examples[:n]}


# ------------------------------------------------------------------------------ health, metrics, page
@root.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@root.get("/readyz", include_in_schema=False)
def readyz(request: Request) -> JSONResponse:
    st = current(request.app)
    ok = st is not None and st.worker.alive
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@root.get("/metrics", include_in_schema=False)
def metrics(st: State) -> Response:
    return Response(generate_latest(st.worker.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@root.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(request: Request, st: State) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "index.html", {"model": st.model_info, "defaults": st.defaults})
