"""Request, response and event-payload models. Ranges here are the API's limits: outside them is a 422.

``steps`` has no upper bound here: it depends on the model, the sampler and the start image, and comes
from :func:`engine.steps_limit` (checked when the job is planned, and written into the served OpenAPI).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine import SAMPLER_INFO
from engine.sampling import SamplerName, Spacing

MAX_SEED = 2**63 - 1


def _sampler_help() -> str:
    lines = "; ".join(f"{name}: {info}" for name, info in SAMPLER_INFO.items())
    return f"null: the server's default (GET /model's defaults). {lines}"


class SampleRequest(BaseModel):
    """What to sample. A field left out (or null) takes the server's default: see ``defaults`` in GET /model.
    ``steps`` ≤ the model's T (one less for the DPM-Solver++ family); ``n`` ≤ the server's max batch."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"n": 16, "sampler": "dpmpp_2m", "steps": 20, "spacing": "logsnr", "seed": 42}]})

    n: int = Field(16, ge=1, le=4096, description="images to generate")
    steps: int | None = Field(None, ge=1, description="reverse steps = model evaluations; null: the sampler's default")
    sampler: SamplerName | None = Field(None, description=_sampler_help())
    spacing: Spacing | None = Field(
        None, description="timesteps: linspace (even in t), leading, trailing (diffusers' names), logsnr (even in "
                          "log α/σ), karras (ρ = 7); null: the sampler's default")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="ddim and dpmpp_2m_sde only: 0 deterministic, "
                                                                "1 fully stochastic; null: ddim 0, dpmpp_2m_sde 1")
    labels: int | Literal["any", "none"] | list[int | None] | None = Field(
        None, description="class-conditional models: a class, 'any' (uniform, drawn from the seed), 'none' (the "
                          "unconditional model), or one class or null per sample; null: 'any'")
    guidance: float | None = Field(None, ge=0.0, le=20.0, description="classifier-free guidance scale s in "
                                   "ε̂ = ε_u + s·(ε_c − ε_u): 1 plain conditional, 0 unconditional; null: the default")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="null: a random seed, returned with the result")
    clip: bool = Field(True, description="clip the predicted x̂0 to the data range")
    init: str | None = Field(None, max_length=64, description="id from POST /noise: start from that x_t")

    @field_validator("labels", mode="before")
    @classmethod
    def _one_query_value(cls, v: Any) -> Any:
        """A query string gives every list-typed field as a list: ``?labels=any`` arrives as ``["any"]``. One
        string there is the scalar it names (a JSON list holds ints and nulls, never strings)."""
        if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
            return v[0]
        return v


class JobRequest(SampleRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"n": 16, "sampler": "dpmpp_2m", "steps": 20, "seed": 42, "frame_every": 1}]})

    frame_every: int = Field(1, ge=1, le=100_000, description="send a frame every k steps (the last always)")
    frame_format: Literal["png", "raw"] = Field(
        "png", description="frames' x_t and x̂0 as PNG data URLs (png) or as base64 uint8 pixels (raw)")


class JobCreated(BaseModel):
    id: str
    position: int = Field(description="place in the queue, 1 = next to start (0: running, or starting now)")


class JobState(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "cancelled", "error"]
    step: int
    of: int
    n: int
    sampler: SamplerName
    spacing: Spacing
    eta: float | None
    seed: int
    position: int
    labels: list[int | None] | None = Field(
        None, description="each image's class once the job has started (null: no label); null before, or for an "
                          "unconditional model")
    guidance: float | None = Field(None, description="the guidance scale s; null for an unconditional model")
    elapsed_ms: float | None = None
    error: str | None = None


class SamplesResponse(BaseModel):
    images: list[str] = Field(description="one base64-encoded PNG per image")
    grid: str = Field(description="base64-encoded PNG of all images tiled")
    seed: int
    elapsed_ms: float


class NoiseResponse(BaseModel):
    id: str = Field(description="pass as `init` to /jobs, /samples or /stream to denoise from this x_t")
    t: int
    alpha_bar: float
    snr: float
    x0: str = Field(description="the uploaded image as the model sees it (PNG data URL)")
    xt: str = Field(description="a draw from q(x_t | x0) (PNG data URL)")


class ErrorResponse(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where the bad value is, e.g. [\"body\", \"n\"]")
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """A 422: every field that is wrong, each with its location and the limit it broke."""

    detail: list[FieldError]


# ------------------------------------------------------------------------------ SSE event payloads
class QueuedEvent(BaseModel):
    """``queued``: the job waits; sent at once and again whenever its place changes."""

    id: str
    position: int = Field(description="place in the queue, 1 = next to start (0: starting now)")


class StartedEvent(BaseModel):
    """``started``: the job's first step is next."""

    id: str
    steps: int = Field(description="reverse steps the job will take")
    n: int
    seed: int
    labels: list[int | None] | None = Field(
        None, description="each image's class as drawn (null: no label); null for an unconditional model")
    guidance: float | None = Field(None, description="the guidance scale s; null for an unconditional model")


class FrameEvent(BaseModel):
    """``frame``: the state after step ``step`` of ``of``. ``xt`` and ``x0`` are the job's images tiled into one
    grid (2-pixel black border, ⌈√n⌉ per row), ``width`` × ``height`` pixels of ``channels`` channels each.

    With ``frame_format=png`` each is a PNG data URL. With ``frame_format=raw`` each is the base64 of the
    grid's uint8 pixels, ``height × width × channels`` bytes in row-major order (channels interleaved)."""

    step: int
    of: int
    t: int = Field(description="the model timestep the prediction was made at")
    format: Literal["png", "raw"]
    width: int
    height: int
    channels: int
    xt: str = Field(description="x_t after this step (at step = of, the final images)")
    x0: str = Field(description="the model's prediction of the clean images x̂0")


class DoneEvent(BaseModel):
    """``done``: the job finished; the stream ends."""

    images: list[str] = Field(description="one PNG data URL per image")
    seed: int
    elapsed_ms: float


class CancelledEvent(BaseModel):
    """``cancelled``: a client cancelled the job; the stream ends."""

    step: int = Field(description="steps taken before it stopped")


class ErrorEvent(BaseModel):
    """``error``: the job failed or the server is shutting down; the stream ends."""

    message: str
