"""Request, response and event-payload models. Ranges here are the API's limits: outside them is a 422.

The sampling request (:class:`SampleRequest`) is generated from the engine's :class:`~engine.SamplingSpec`:
each field's type, default, bounds and help are the spec's. Limits that depend on the model and the server
(``steps`` against T, ``n`` against the max batch, labels on an unconditional model) are checked by
:func:`engine.resolve`, whose errors name the field, and written into the served OpenAPI.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from engine import (
    BOARD,
    DEFAULT_TOY_DATASET,
    DEFAULT_TOY_STEPS,
    MAX_DRAWN_POINTS,
    MAX_SEED,
    TOY_SAMPLERS,
    SamplerName,
    SamplingSpec,
    Spacing,
    ToyName,
    config_types,
)


def _one_query_value(v: Any) -> Any:
    """A query string gives every list-typed field as a list: ``?labels=any`` arrives as ``["any"]``. One
    string there is the scalar it names (a JSON list holds ints and nulls, never strings)."""
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
        return v[0]
    return v


def _spec_field(f: dataclasses.Field) -> tuple[Any, Any]:
    """A pydantic field from a spec field: its type, default, bounds and help."""
    meta = f.metadata
    bounds = {k: meta[k] for k in ("ge", "gt", "le", "lt", "max_length") if meta.get(k) is not None}
    help_text = meta["help"]
    if f.default is None:
        help_text = help_text.replace("default: ", "null: ", 1) if "default: " in help_text else help_text
    return config_types(SamplingSpec)[f.name], Field(f.default, description=help_text, **bounds)


SampleRequest: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "SampleRequest",
    __config__=ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"n": 16, "sampler": "dpmpp_2m", "steps": 20, "spacing": "logsnr", "seed": 42}]}),
    __doc__="What to sample. A field left out (or null) takes the server's default: see ``defaults`` in GET "
            "/model. ``steps`` ≤ the model's T (one less for the DPM-Solver++ family); ``n`` ≤ the server's max "
            "batch.",
    __validators__={"labels_from_query": field_validator("labels", mode="before")(_one_query_value)},
    **{f.name: _spec_field(f) for f in dataclasses.fields(SamplingSpec)},
)


def spec_of(req: BaseModel) -> SamplingSpec:
    """The engine's spec from a request (its extra fields, such as ``frame_every``, left out)."""
    return SamplingSpec(**{f.name: getattr(req, f.name) for f in dataclasses.fields(SamplingSpec)})


#: The sampling fields an interpolation takes from the spec (its n is ``k``; its seeds and labels are pairs).
INTERPOLATE_FIELDS = ("sampler", "steps", "spacing", "eta", "guidance", "guidance_interval", "rtol", "atol", "clip")

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
InterpolateRequest: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "InterpolateRequest",
    __config__=ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"seeds": [1, 2], "labels": [3, 8], "k": 9, "sampler": "ddim", "steps": 50}]}),
    __doc__="A strip of k images from one seed's x_T to another's along a great circle, decoded by a deterministic "
            "sampler; on a class-conditional model the class embedding blends from the first label to the second.",
    seeds=(tuple[Seed | None, Seed | None], Field(
        description="the strip's two ends: each end is that seed's one-image job (null where `inits` gives the end)")),
    inits=(tuple[str | None, str | None] | None, Field(
        None, description="ends given as an inverted image's x_T instead of a seed: the `id` from POST /invert "
                          "(null where `seeds` gives the end)")),
    labels=(tuple[int | None, int | None] | None, Field(
        None, description="class-conditional models: the classes at the two ends (null: no label), blended along "
                          "the strip; null: no label throughout")),
    k=(int, Field(9, ge=2, le=64, description="images along the strip (at most the server's max batch)")),
    frame_every=(int, Field(1, ge=1, le=100_000, description="send a frame every k steps (the last always)")),
    frame_format=(Literal["png", "raw"], Field("png", description="frames as PNG data URLs or raw pixels")),
    **{f.name: _spec_field(f) for f in dataclasses.fields(SamplingSpec) if f.name in INTERPOLATE_FIELDS},
)


class JobRequest(SampleRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"n": 16, "sampler": "dpmpp_2m", "steps": 20, "seed": 42, "frame_every": 1}]})

    frame_every: int = Field(1, ge=1, le=100_000, description="send a frame every k steps (the last always)")
    frame_format: Literal["png", "raw"] = Field(
        "png", description="frames' x_t and x̂0 as PNG data URLs (png) or as base64 uint8 pixels (raw)")


Coordinate = Annotated[float, Field(ge=-BOARD, le=BOARD, allow_inf_nan=False)]
MAX_TOY_N = 4000  # a playground job's final samples: a few times what the page draws


class ToyRequest(BaseModel):
    """Train a small MLP denoiser on 2D points while the events stream its progress, then sample it. The job's
    events come from GET /jobs/{id}/events; it is cancelled when no event stream has read it for the server's
    toy_orphan_s (10 s by default)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"dataset": "8gaussians", "seconds": 20, "n": 2000, "seed": 0}]})

    dataset: ToyName | None = Field(
        None, description=f"the distribution to learn; null: {DEFAULT_TOY_DATASET}, or the points given")
    points: list[tuple[Coordinate, Coordinate]] | None = Field(
        None, min_length=2, max_length=MAX_DRAWN_POINTS,
        description=f"your own points [[x, y], …] on the board [−{BOARD:g}, {BOARD:g}]², instead of a dataset")
    seconds: float = Field(20.0, gt=0, le=3600, description="training time: the worker's seconds spent training "
                                                            "(at most the server's max_toy_seconds)")
    n: int = Field(2000, ge=1, le=MAX_TOY_N, description="points to sample once trained")
    sampler: Literal[TOY_SAMPLERS] = Field("ddpm", description="their sampler")  # type: ignore[valid-type]
    steps: int | None = Field(None, ge=1, le=1000, description=f"its steps (within what the sampler takes); null: "
                                                               f"{DEFAULT_TOY_STEPS}, and ode_rk45 picks its own")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the data, the network and the samples")


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
    spacing: Spacing | None = Field(description="null for ode_rk45, which picks its own steps")
    eta: float | None
    seed: int
    position: int
    labels: list[int | None] | None = Field(
        None, description="each image's class, drawn when the request was accepted (null: no label); null for an "
                          "unconditional model")
    guidance: float | None = Field(None, description="the guidance scale s; null for an unconditional model")
    guidance_interval: tuple[int, int] | None = Field(
        None, description="the timesteps [t_lo, t_hi] at which guidance applies; null for an unconditional model")
    elapsed_ms: float | None = None
    error: str | None = None


class ToyJobState(BaseModel):
    id: str
    kind: Literal["toy"] = "toy"
    state: Literal["queued", "running", "done", "cancelled", "error"]
    step: int = Field(description="training steps taken")
    seconds: float = Field(description="seconds trained so far")
    of_seconds: float = Field(description="seconds it trains in all")
    position: int
    elapsed_ms: float | None = None
    error: str | None = None


class SamplesResponse(BaseModel):
    images: list[str] = Field(description="one base64-encoded PNG per image")
    grid: str = Field(description="base64-encoded PNG of all images tiled")
    seed: int
    elapsed_ms: float
    evaluations: int = Field(description="model evaluations the sampler made (ode_rk45 picks its own number)")


class LikelihoodResponse(BaseModel):
    bpd_ode: float = Field(description="bits/dim by the probability-flow ODE (Hutchinson–Skilling trace, uniform "
                                       "dequantisation)")
    bpd_bound: float = Field(description="bits/dim by the variational bound, all T terms")
    ode_evaluations: int = Field(description="network evaluations of the ODE solve (each with one backward pass)")
    tolerance: float = Field(description="the ODE solver's rtol = atol")
    x0: str = Field(description="the uploaded image as the model sees it (PNG data URL)")
    elapsed_ms: float


class InvertResponse(BaseModel):
    id: str = Field(description="the image's x_T: pass as `init` with sampler ddim, eta 0 and the same steps to "
                                "decode it; with its own label and guidance 1 over every step (guidance_interval "
                                "[0, T − 1]) that gives the reconstruction back, under another label (guided or "
                                "not) the image redrawn as that class")
    steps: int
    psnr: float = Field(description="the round trip's PSNR in dB (pixels in [0, 1])")
    x0: str = Field(description="the uploaded image as the model sees it (PNG data URL)")
    reconstruction: str = Field(description="x_T decoded back, unguided, under the given label (PNG data URL)")
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
    evaluations: int = Field(description="model evaluations the sampler made (ode_rk45 picks its own number)")


Points = list[tuple[float, float]]


class ToyStartedEvent(BaseModel):
    """``toy_started``: a playground job started training; ``data`` is a draw of its training points."""

    data: Points


class ToyProgressEvent(BaseModel):
    """``toy_progress``: about every half second of training, the loss and fresh samples from the EMA model (a
    slow client skips some: the latest wins)."""

    step: int = Field(description="training steps so far")
    loss: float = Field(description="mean L_simple since the last progress event")
    seconds: float = Field(description="seconds trained so far")
    points: Points = Field(description="fresh samples (500, DDIM, 20 steps)")


class ToyDoneEvent(BaseModel):
    """``toy_done``: the playground job finished; the stream ends."""

    steps: int = Field(description="training steps taken")
    seconds: float = Field(description="seconds trained")
    elapsed_ms: float = Field(description="wall time from start to finish, sampling included")
    points: Points = Field(description="the n samples, by the request's sampler")
    sde: list[Points] = Field(description="64 particles along the reverse SDE (DDPM, 50 steps): [level][particle]")
    ode: list[Points] = Field(description="the same x_T along the probability-flow ODE (DDIM η = 0, 50 steps)")
    extent: float = Field(description="the field's grid spans [−extent, extent]²")
    field_t: list[int] = Field(description="the timesteps the field is drawn at")
    field_sigma: list[float] = Field(description="√(1 − ᾱ_t) at each of them: the score is −ε̂/σ")
    field: list[list[Points]] = Field(description="ε̂ [timestep][row (y ascending)][column (x ascending)]")
    losses: list[tuple[int, float]] = Field(description="(step, loss) of every progress event")


class CancelledEvent(BaseModel):
    """``cancelled``: a client cancelled the job; the stream ends."""

    step: int = Field(description="steps taken before it stopped")


class ErrorEvent(BaseModel):
    """``error``: the job failed or the server is shutting down; the stream ends."""

    message: str
