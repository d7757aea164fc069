"""The app factory: load the model once, start the worker, mount the API and the page."""

from __future__ import annotations

import json
import logging
import math
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from engine import LoadedModel, load_model_file, resolve_device
from engine.training.datasets import BUNDLED

from .frames import data_url
from .limits import BodyLimit
from .routes import api, new_noised_store, root, schedule_info
from .settings import Settings
from .worker import SamplingWorker, on_a_thread_that_exits

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("ddpm")
# Respaced 100-step DDPM: on the bundled model it is the interactive sampler that meets the quality
# bar (confident share 0.908 on 1000 samples, where DDIM 50 and DDIM 100 reach 0.86; README).
PAGE_DEFAULTS = {"sampler": "ddpm", "steps": 100, "eta": 0.0, "n": 16, "frame_every": 1}


def model_info(m: LoadedModel, device: torch.device, max_batch: int) -> dict[str, Any]:
    c, d = m.card, m.card.diffusion
    return {
        "name": c.name, "parameters": m.num_parameters, "dataset": c.data.get("dataset", "unknown"),
        "steps": c.trained_total("steps"), "images_seen": c.trained_total("images_seen"), "device": str(device),
        "image_size": m.sample_shape[1], "channels": m.sample_shape[0], "T": m.diffusion.T,
        "schedule": "custom" if d.betas is not None else d.schedule, "prediction": d.prediction,
        "variance": d.variance, "value_range": list(c.value_range), "arch": c.model.arch, "max_batch": max_batch,
        "file": m.path.name,
    }


def _examples(m: LoadedModel, n: int = 32) -> list[str]:
    """Held-out digits for the page's "pick a dataset sample", when the model is an MNIST-5k one."""
    if m.card.data.get("dataset") != "mnist5k" or m.sample_shape != (1, 28, 28):
        return []
    from engine.io.images import png_bytes, to_uint8_array
    from engine.training.datasets import load_dataset

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


def declare_limits(schema: dict[str, Any], max_batch: int, T: int) -> dict[str, Any]:
    """``schema`` (an OpenAPI dict, changed in place) with this server's real limits: ``n`` ≤ max batch,
    ``steps`` ≤ T and the upload's ``t`` < T. The request models carry only outer caps, since the real
    limits depend on the model and the flags, so without this a client would learn them from a 422."""
    caps = {"n": max_batch, "steps": T, "t": T - 1}
    comps = schema.get("components", {}).get("schemas", {})
    for name in ("SampleRequest", "JobRequest", "Body_post_noise_api_v1_noise_post"):
        for field, prop in comps.get(name, {}).get("properties", {}).items():
            if field in caps and prop.get("type") == "integer":
                prop["maximum"] = min(prop.get("maximum", caps[field]), caps[field])
    for param in schema.get("paths", {}).get(api.prefix + "/stream", {}).get("get", {}).get("parameters", []):
        if param.get("in") == "query" and param["name"] in caps:
            cap = caps[param["name"]]
            param["schema"]["maximum"] = min(param["schema"].get("maximum", cap), cap)
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        device = resolve_device(settings.device)

        def load() -> tuple[LoadedModel, list[str]]:  # large torch ops: off the loop's thread (see app.worker)
            m = load_model_file(settings.model, device)
            return m, _examples(m) if BUNDLED.exists() else []

        m, examples = await on_a_thread_that_exits(load)
        worker = SamplingWorker(m, device, settings.max_batch, settings.max_active_jobs, settings.max_queue,
                                settings.event_buffer, settings.job_ttl_s, settings.max_finished_jobs)
        try:
            worker.start()
        except BaseException:
            worker.stop()
            raise
        st = app.state
        st.settings, st.model, st.worker, st.device = settings, m, worker, device
        st.model_info = model_info(m, device, settings.max_batch)
        st.schedule_info = schedule_info(m.diffusion.schedule, st.model_info["schedule"])
        st.defaults = {**PAGE_DEFAULTS, "steps": min(PAGE_DEFAULTS["steps"], m.diffusion.T),
                       "n": min(PAGE_DEFAULTS["n"], settings.max_batch)}
        st.noised = new_noised_store()
        app.openapi_schema = declare_limits(FastAPI.openapi(app), settings.max_batch, m.diffusion.T)
        st.noise_slots = threading.BoundedSemaphore(settings.max_noise_uploads)
        st.examples = examples
        log.info("model %s (%d parameters) on %s", m.path, m.num_parameters, device)
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="DDPM streaming demo", version="0.1.0", lifespan=lifespan,
                  description="Watch x_t and the predicted x̂0 form step by step. SSE events: queued, started, "
                              "frame, done, cancelled, error.")
    app.state.templates = Jinja2Templates(directory=str(ROOT / "templates"))
    app.add_middleware(BodyLimit, max_upload_bytes=settings.max_upload_bytes, upload_paths=(api.prefix + "/noise",))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(api)
    app.include_router(root)
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")
    return app
