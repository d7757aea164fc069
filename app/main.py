"""The app factory: load the model once, start the worker, mount the API and the page."""

from __future__ import annotations

import json
import logging
import math
import threading
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import Gauge

from engine import (
    BOARD,
    BUNDLED_DATASET,
    DEFAULT_TOY_STEPS,
    MAX_DRAWN_POINTS,
    SAMPLER_INFO,
    SAMPLERS,
    TOY_DATASETS,
    TOY_SAMPLERS,
    LoadedModel,
    SamplingSpec,
    ServerDefaults,
    complete,
    load_dataset,
    load_model,
    png_bytes,
    resolve_device,
    steps_limit,
    to_uint8_array,
)

from .http import sse
from .http.limits import BodyLimit
from .http.routes import UPLOAD_ROUTES, WEB, api, root, schedule_info
from .http.schemas import ToyRequest
from .http.security import ClientJobs, secure
from .runtime.frames import data_url
from .runtime.worker import SamplingWorker
from .settings import Settings
from .state import AppState, install
from .threads import on_a_thread_that_exits

log = logging.getLogger("ddpm")
PAGE_DEFAULTS = {"n": SamplingSpec().n, "frame_every": 1}  # the page's form


def sampling_defaults(m: LoadedModel, defaults: ServerDefaults) -> dict[str, Any]:
    """What a request that leaves the sampling fields out gets, and what each sampler gets when only it is
    named: :func:`engine.complete` of those requests, so that this page can never disagree with a job."""
    keys = ("sampler", "steps", "spacing", "eta", "snr", "corrector_steps", "rtol", "atol", "labels", "guidance",
            "guidance_interval")

    def filled(spec: SamplingSpec) -> dict[str, Any]:
        full = complete(spec.replace(seed=0), m, defaults)
        return {k: getattr(full, k) for k in keys}

    per = {name: {**filled(SamplingSpec(sampler=name)), "about": SAMPLER_INFO[name]} for name in SAMPLERS}
    for entry in per.values():
        del entry["labels"], entry["guidance"], entry["guidance_interval"]
    return {**filled(SamplingSpec()), "samplers": per}


def model_info(m: LoadedModel, device: torch.device, settings: Settings) -> dict[str, Any]:
    c, d = m.card, m.card.diffusion
    return {
        "name": c.name, "parameters": m.num_parameters, "dataset": c.data.get("dataset", "unknown"),
        "steps": c.trained_total("steps"), "images_seen": c.trained_total("images_seen"), "device": str(device),
        "image_size": m.sample_shape[1], "channels": m.sample_shape[0], "T": m.diffusion.T,
        "schedule": "custom" if d.betas is not None else d.schedule, "prediction": d.prediction,
        "variance": d.variance, "value_range": list(c.value_range), "arch": c.model.arch,
        "max_batch": settings.max_batch, "file": m.path.name,
        "unconditional_prior": m.prior_path.name if m.prior_path else None,
        "classes": c.data.get("classes") or list(range(m.num_classes)),
        "defaults": sampling_defaults(m, settings.sampling_defaults),
    }


def toy_page(settings: Settings) -> dict[str, Any]:
    """The playground panel's form: its datasets, board, limits and default seconds (the API's)."""
    return {"datasets": list(TOY_DATASETS), "board": BOARD, "max_points": MAX_DRAWN_POINTS,
            "samplers": list(TOY_SAMPLERS), "steps": DEFAULT_TOY_STEPS, "max_seconds": settings.max_toy_seconds,
            "seconds": min(ToyRequest.model_fields["seconds"].default, settings.max_toy_seconds)}


def _examples(m: LoadedModel, n: int = 32) -> list[str]:
    """Held-out digits for the page's "pick a dataset sample", when the model is an MNIST-5k one."""
    if m.card.data.get("dataset") != "mnist5k" or m.sample_shape != (1, 28, 28):
        return []
    test = load_dataset("mnist5k", "test")
    picks = [int(np.nonzero(test.labels.numpy() == d)[0][k]) for k in range(n // 10 + 1) for d in range(10)][:n]
    u8 = to_uint8_array(test.images[picks], (-1.0, 1.0))
    return [data_url(png_bytes(u8[i])) for i in range(len(picks))]


def _json_safe(v: Any) -> Any:
    """``v`` with every non-finite float as its string, since JSON has no NaN or Infinity."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, except that a bad value of NaN or Infinity (which Python's JSON parser accepts)
    is echoed as a string, and so is a body that is not UTF-8; FastAPI's own handler answers 500 to both."""
    errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
    # ASCII escapes, so that a lone surrogate in an echoed input cannot fail the UTF-8 encoding either.
    body = json.dumps({"detail": _json_safe(errors)}, ensure_ascii=True, allow_nan=False)
    return Response(body, status_code=422, media_type="application/json")


def declare_limits(schema: dict[str, Any], max_batch: int, model: LoadedModel) -> dict[str, Any]:
    """``schema`` (an OpenAPI dict, changed in place) with this server's real limits: ``n`` ≤ max batch,
    ``steps`` ≤ the most any sampler takes (:func:`engine.steps_limit`) and the upload's ``t`` < T. The
    request models carry only outer caps, since the real limits depend on the model and the flags, so
    without this a client would learn them from a 422."""
    T = model.diffusion.T
    hi = max(steps_limit(model.diffusion, sampler) for sampler in SAMPLERS)
    caps = {"n": (None, max_batch), "steps": (1, hi), "t": (None, T - 1)}

    def narrow(field: str, prop: dict[str, Any]) -> None:
        """Bound an integer field, nullable ones (``anyOf`` integer/null) included: bounds only constrain numbers."""
        if prop.get("type") != "integer" and not any(b.get("type") == "integer" for b in prop.get("anyOf", [])):
            return
        low, high = caps[field]
        prop["maximum"] = min(prop.get("maximum", high), high)
        if low is not None:
            prop["minimum"] = max(prop.get("minimum", low), low)

    comps = schema.get("components", {}).get("schemas", {})
    for name in ("SampleRequest", "JobRequest", "Body_post_noise_api_v1_noise_post"):
        for field, prop in comps.get(name, {}).get("properties", {}).items():
            if field in caps:
                narrow(field, prop)
    for param in schema.get("paths", {}).get(api.prefix + "/stream", {}).get("get", {}).get("parameters", []):
        if param.get("in") == "query" and param["name"] in caps:
            narrow(param["name"], param["schema"])
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        device = resolve_device(settings.device)

        # Large torch ops: not on the event loop's thread (see app.runtime.worker).
        def load() -> tuple[LoadedModel, list[str]]:
            m = load_model(settings.model, device, settings.uncond_model)
            return m, _examples(m) if BUNDLED_DATASET.exists() else []

        m, examples = await on_a_thread_that_exits(load)
        worker = SamplingWorker(m, device, settings.max_batch, settings.max_active_jobs, settings.max_queue,
                                settings.job_ttl_s, settings.max_finished_jobs, settings.toy_share,
                                settings.toy_orphan_s)
        try:
            worker.start()
        except BaseException:
            worker.stop()
            raise
        info = model_info(m, device, settings)
        install(app, AppState(
            settings=settings, model=m, device=device, worker=worker, model_info=info,
            schedule_info=schedule_info(m.diffusion.schedule, info["schedule"]),
            defaults={**PAGE_DEFAULTS, **info["defaults"], "n": min(PAGE_DEFAULTS["n"], settings.max_batch),
                      "toy": toy_page(settings)},
            examples=examples, noise_slots=threading.BoundedSemaphore(settings.max_noise_uploads),
            likelihood_slots=threading.BoundedSemaphore(settings.max_likelihood_jobs),
            clients=ClientJobs(settings.max_jobs_per_client, settings.trusted_proxies),
            sse_clients=Gauge("ddpm_sse_clients", "open server-sent event streams", registry=worker.metrics.registry),
        ))
        schema = declare_limits(FastAPI.openapi(app), settings.max_batch, m)
        app.openapi_schema = sse.document_events(schema)
        log.info("model %s (%d parameters) on %s", m.path, m.num_parameters, device)
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="DDPM streaming demo", version="0.1.0", lifespan=lifespan,
                  description="Watch x_t and the predicted x̂0 form step by step. SSE events: "
                              + ", ".join(name for name, _ in sse.EVENTS.values())
                              + "; their payloads are documented on the SSE routes.")
    app.add_middleware(BodyLimit, max_upload_bytes=settings.max_upload_bytes,
                       upload_paths=tuple(api.prefix + route for route in UPLOAD_ROUTES),
                       points_paths=(api.prefix + "/toy/jobs",))
    secure(app, settings)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(api)
    app.include_router(root)
    app.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")
    return app
