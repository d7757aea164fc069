"""One sampling request: every field declared once (:class:`SamplingSpec`), and the one place that fills its
defaults from the model and checks it against the model (:func:`resolve`).

The API's request models (``app/http/schemas.py``) and the flags of ``ddpm sample`` and ``ddpm eval``
(:mod:`engine.cli.flags`) are generated from the spec's fields, so a field's type, default, bounds and help
live here only. :func:`resolve` raises :class:`SpecError`, which names the field as data: the server
answers 422 with that field's location, and the command line names the field's flag.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..models.base import SamplingModel
from ..options import config_types, literal_choices, option, out_of_bounds
from .defaults import DEFAULT_GUIDANCE, choose, default_guidance_interval
from .errors import SpecError
from .guidance import Conditioning, Labels, resolve_labels
from .ode import DEFAULT_ATOL, DEFAULT_RTOL, OdePlan
from .plan import SamplingPlan, steps_limit
from .pndm import PNDM_MIN_LEVELS
from .score_sde import DEFAULT_CORRECTOR_STEPS, DEFAULT_SNR
from .solvers import ADAPTIVE, DEFAULT_ETA, SAMPLER_INFO, SamplerName
from .spacing import Spacing

MAX_SEED = 2**63 - 1
#: The guidance scales a request (or a server's default) may ask for.
GUIDANCE_RANGE = (0.0, 20.0)
#: Seeds drawn for a request that gives none stay below 2^53, so that JavaScript reads them exactly.
RANDOM_SEEDS = 2**53
#: Fields that belong to some samplers only, with each one's default; a request that gives one to another
#: sampler is refused rather than ignored.
SAMPLER_FIELDS: dict[str, dict[SamplerName, float | int]] = {
    "eta": dict(DEFAULT_ETA),
    "snr": {"pc": DEFAULT_SNR},
    "corrector_steps": {"pc": DEFAULT_CORRECTOR_STEPS},
    "rtol": {ADAPTIVE: DEFAULT_RTOL},
    "atol": {ADAPTIVE: DEFAULT_ATOL},
}
#: The fewest steps a sampler takes, where more than one.
MIN_STEPS: dict[SamplerName, int] = {"pndm": PNDM_MIN_LEVELS}


def parse_labels(text: str) -> Labels:
    """``labels`` as the command line writes it: ``7``, ``any``, ``each``, ``none``, or ``1,none,3`` per sample."""
    words = [w.strip() for w in text.split(",")]
    if len(words) == 1 and words[0] in ("any", "each", "none"):
        return words[0]  # type: ignore[return-value]
    try:
        values = [None if w in ("none", "null") else int(w) for w in words]
    except ValueError:
        raise ValueError(f"must be a class number, 'any', 'each', 'none' or a comma-separated list, got {text!r}") \
            from None
    return values[0] if len(values) == 1 and values[0] is not None else values


def parse_interval(text: str) -> tuple[int, int]:
    """``guidance_interval`` as the command line and ``DDPM_GUIDANCE_INTERVAL`` write it: ``T_LO,T_HI``."""
    try:
        lo, hi = (int(w) for w in text.split(","))
    except ValueError:  # not two words, or not integers
        raise ValueError(f"must be two timesteps T_LO,T_HI, got {text!r}") from None
    return lo, hi


def parse_scales(text: str) -> list[float]:
    """``guidance_grid`` as the command line writes it: ``0,1,2,4,8``."""
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(f"must be guidance scales S1,S2,…, got {text!r}") from None


#: The most rows a guidance grid may have.
MAX_GRID_ROWS = 8


def _sampler_help() -> str:
    return "default: the model kind's (the server lists its defaults in GET /model). " + "; ".join(
        f"{name}: {info}" for name, info in SAMPLER_INFO.items())


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample. A field left None takes the default :func:`resolve` fills from the model."""

    n: int = option(16, ge=1, le=100_000, help="images to generate")
    sampler: SamplerName | None = option(None, help=_sampler_help())
    steps: int | None = option(None, ge=1, help="reverse steps (levels visited); at most the model's T (one fewer for "
                                                "the DPM-Solver++ family); model evaluations = steps except plms "
                                                "(+1), pndm (+9) and pc (× (1 + corrector_steps)); ode_rk45 takes "
                                                "none; default: the sampler's")
    spacing: Spacing | None = option(
        None, help="timesteps: linspace (even in t), leading, trailing (diffusers' names), logsnr (even in log α/σ), "
                   "karras (ρ = 7); default: the sampler's")
    eta: float | None = option(None, ge=0.0, le=1.0, help="ddim and dpmpp_2m_sde only: 0 deterministic, 1 fully "
                                                          "stochastic; default: ddim 0, dpmpp_2m_sde 1")
    snr: float | None = option(None, gt=0.0, le=1.0, help=f"pc only: the Langevin corrector's signal-to-noise "
                                                          f"ratio; default: {DEFAULT_SNR}")
    corrector_steps: int | None = option(None, ge=0, le=10, help=f"pc only: Langevin moves per level; default: "
                                                                 f"{DEFAULT_CORRECTOR_STEPS}")
    rtol: float | None = option(None, ge=1e-6, le=0.5, help=f"ode_rk45 only: relative tolerance of the adaptive "
                                                            f"solver; default: {DEFAULT_RTOL:g}")
    atol: float | None = option(None, ge=1e-6, le=0.5, help=f"ode_rk45 only: absolute tolerance (data in [-1, 1]); "
                                                            f"default: {DEFAULT_ATOL:g}")
    labels: Labels = option(
        None, flag_name="label", metavar="C|any|each|none", parse=parse_labels,
        help="class-conditional models: a class, 'any' (uniform, drawn from the seed), 'each' (classes 0, 1, … in "
             "turn), 'none' (the unconditional model), or one class or null per sample; default: 'any'")
    guidance: float | None = option(
        None, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1],
        help=f"classifier-free guidance scale s in ε̂ = ε_u + s·(ε_c − ε_u): 1 plain conditional, 0 unconditional; "
             f"default: {DEFAULT_GUIDANCE:g}")
    guidance_interval: tuple[int, int] | None = option(
        None, metavar="T_LO,T_HI", parse=parse_interval,
        help="class-conditional models: guide only at model timesteps t with t_lo ≤ t ≤ t_hi (t in [0, T − 1], high "
             "t is noisy); the other steps are purely conditional and evaluate one row instead of two "
             "(Kynkäänniemi et al. 2024); default: the lower 55 % of t, [0, 549] when T = 1000")
    guidance_grid: list[float] | None = option(
        None, metavar="S1,S2,…", parse=parse_scales,
        help=f"class-conditional models, instead of guidance: one row of the n images per scale (at most "
             f"{MAX_GRID_ROWS}), every row from the same x_T and noise, so one job shows what guidance does to the "
             f"same draws; n × rows images in all")
    seed: int | None = option(None, ge=0, le=MAX_SEED, help="default: a random seed, reported with the result")
    clip: bool = option(True, help="clip the predicted x̂0 to the data range")
    init: str | None = option(None, flag=False, max_length=64,
                              help="id from POST /noise: start from that x_t instead of pure noise")

    def replace(self, **changes: Any) -> SamplingSpec:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Start:
    """Where a run begins instead of pure noise: ``x`` ``(1 or n, C, H, W)`` at model timestep ``t``."""

    x: Tensor
    t: int


@dataclass(frozen=True)
class ServerDefaults:
    """An operator's defaults for what a request leaves out, over the model kind's (None: the model kind's)."""

    sampler: SamplerName | None = None
    guidance: float | None = None
    guidance_interval: tuple[int, int] | None = None


@dataclass(frozen=True)
class SamplingRun:
    """Everything one run needs: the complete spec (no field left None but ``init`` and, for an
    unconditional model, ``labels``/``guidance``), its plan, the labels drawn, and the generator that
    draws x_T and every step's noise next (labels come first, so a seed fixes them too)."""

    spec: SamplingSpec
    plan: SamplingPlan | OdePlan
    shape: tuple[int, ...]
    generator: torch.Generator
    cond: Conditioning | None = None
    start: Start | None = None

    @property
    def rows(self) -> int:
        """Copies of the n draws in the run: one per ``guidance_grid`` scale, else 1."""
        return len(self.spec.guidance_grid) if self.spec.guidance_grid else 1

    @property
    def drawn_labels(self) -> list[int | None] | None:
        """Each image's class (None: no label), the nearer end's where an embedding blends; None for an
        unconditional model."""
        if self.cond is None:
            return None
        null = self.cond.null_label
        to, mix = self.cond.mixing
        labels = torch.where(mix >= 0.5, to, self.cond.labels)
        return [None if v == null else v for v in labels.tolist()]


def check_fields(spec: SamplingSpec) -> None:
    """Each field's declared choices and bounds (the checks that need no model)."""
    hints = config_types(SamplingSpec)
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        choices = literal_choices(hints[f.name])
        if value is not None and choices is not None and value not in choices:
            raise SpecError(f.name, f"{f.name} must be one of {choices}, got {value!r}", value)
        if value is None or isinstance(value, bool | list | tuple):
            continue
        if why := out_of_bounds(value, f.metadata):
            raise SpecError(f.name, f"{f.name} {why}, got {value!r}", value)


def complete(spec: SamplingSpec, model: SamplingModel, defaults: ServerDefaults = ServerDefaults(),
             start_t: int | None = None, max_n: int | None = None) -> SamplingSpec:
    """``spec`` with every default filled from ``defaults`` and the model, checked against the model.

    ``start_t``: the timestep of the run's start image, if it has one (it bounds ``steps``); ``max_n``: the
    most images the caller serves at once. Raises :class:`SpecError` naming the first field it refuses.
    """
    check_fields(spec)
    if max_n is not None and spec.n > max_n:
        raise SpecError("n", f"n must be ≤ {max_n} (the server's max batch)", spec.n)
    conditional = model.num_classes > 0
    if spec.guidance_grid is not None:
        _check_grid(spec, max_n)
    if not conditional:
        for name in ("labels", "guidance", "guidance_interval", "guidance_grid"):
            if getattr(spec, name) is not None:
                raise SpecError(name, f"{name}: this model is unconditional", getattr(spec, name))
    sampler = choose(spec.sampler, None, None, defaults.sampler, conditional).sampler
    own = {}
    for name, per in SAMPLER_FIELDS.items():
        value = getattr(spec, name)
        if value is not None and sampler not in per:
            raise SpecError(name, f"{name} applies only to {tuple(per)}, not to {sampler!r}", value)
        own[name] = per.get(sampler) if value is None else value
    filled = spec.replace(sampler=sampler, **own,
                          seed=secrets.randbelow(RANDOM_SEEDS) if spec.seed is None else spec.seed)
    if sampler == ADAPTIVE:
        if start_t == 0:
            raise SpecError("init", f"init: an image at t = 0 is where {ADAPTIVE} would end; noise it to a higher t",
                            start_t)
        for name in ("steps", "spacing"):
            if getattr(spec, name) is not None:
                raise SpecError(name, f"{name}: {ADAPTIVE} chooses its own steps (set rtol and atol instead)",
                                getattr(spec, name))
    else:
        filled = filled.replace(**_steps(spec, sampler, model, defaults, conditional, start_t))
    if not conditional:
        return filled
    labels = "any" if spec.labels is None else spec.labels
    if labels != "any":  # "any" is drawn from the run's generator, in resolve()
        try:
            resolve_labels(labels, spec.n, model.num_classes, None)
        except ValueError as e:
            raise SpecError("labels", str(e), spec.labels) from None
    guidance = spec.guidance
    if guidance is None and spec.guidance_grid is None:
        guidance = DEFAULT_GUIDANCE if defaults.guidance is None else defaults.guidance
    T = model.diffusion.T
    interval = spec.guidance_interval or defaults.guidance_interval or default_guidance_interval(T)
    interval = tuple(interval)
    if len(interval) != 2 or not 0 <= interval[0] <= interval[1] <= T - 1:
        raise SpecError("guidance_interval", f"guidance_interval must be two timesteps t_lo ≤ t_hi in [0, {T - 1}], "
                                             f"got {list(interval)}", interval)
    return filled.replace(labels=labels, guidance=guidance, guidance_interval=interval)


def _check_grid(spec: SamplingSpec, max_n: int | None) -> None:
    grid = spec.guidance_grid
    assert grid is not None
    lo, hi = GUIDANCE_RANGE
    if spec.guidance is not None:
        raise SpecError("guidance_grid", "guidance_grid replaces guidance: give one or the other", grid)
    if not 1 <= len(grid) <= MAX_GRID_ROWS:
        raise SpecError("guidance_grid", f"guidance_grid must hold 1 … {MAX_GRID_ROWS} scales, got {len(grid)}", grid)
    if any(not lo <= s <= hi for s in grid):
        raise SpecError("guidance_grid", f"guidance_grid: each scale must lie in [{lo:g}, {hi:g}], got {grid}", grid)
    if max_n is not None and spec.n * len(grid) > max_n:
        raise SpecError("guidance_grid", f"guidance_grid: n × rows = {spec.n * len(grid)} images, more than the "
                                         f"server's max batch ({max_n})", grid)


def _steps(spec: SamplingSpec, sampler: SamplerName, model: SamplingModel, defaults: ServerDefaults,
           conditional: bool, start_t: int | None) -> dict[str, Any]:
    """``steps`` and ``spacing`` of a fixed-step sampler, the default steps capped at what the run allows."""
    choice = choose(sampler, spec.steps, spec.spacing, defaults.sampler, conditional)
    assert choice.steps is not None
    hi = steps_limit(model.diffusion, sampler, start_t)
    steps = min(choice.steps, hi) if spec.steps is None else spec.steps
    if steps > hi:
        T = model.diffusion.T
        limit = f"T = {T} of this model" if start_t is None else f"the init image's t = {start_t}, plus 1"
        if hi == (T if start_t is None else start_t + 1) - 1:  # the DPM-Solver++ family visits no t = 0
            limit = f"{limit.removesuffix(', plus 1')}: {sampler} takes no step at t = 0"
        raise SpecError("steps", f"steps must be ≤ {hi} ({limit})", steps)
    lo = MIN_STEPS.get(sampler, 1)
    if steps < lo:
        raise SpecError("steps", f"steps must be ≥ {lo} for {sampler}", steps)
    return {"steps": steps, "spacing": choice.spacing}


def resolve(spec: SamplingSpec, model: SamplingModel, defaults: ServerDefaults = ServerDefaults(),
            start: Start | None = None, max_n: int | None = None) -> SamplingRun:
    """What ``spec`` asks of ``model``: the complete spec, the plan, the labels and the seeded generator.

    The only place that fills defaults and checks a request against a model; raises :class:`SpecError`.
    Labels are drawn here, from the run's generator, before its x_T (which the stepper draws).
    """
    full = complete(spec, model, defaults, None if start is None else start.t, max_n)
    assert full.sampler is not None and full.seed is not None
    start_t = None if start is None else start.t
    plan: SamplingPlan | OdePlan
    try:
        if full.sampler == ADAPTIVE:
            assert full.rtol is not None and full.atol is not None
            plan = OdePlan.build(model.diffusion, full.rtol, full.atol, start_t)
        else:
            assert full.steps is not None and full.spacing is not None
            plan = SamplingPlan.build(model.diffusion, full.sampler, full.steps, full.eta, start_t, full.spacing,
                                      full.snr, full.corrector_steps)
    except ValueError as e:  # a schedule the sampler cannot read (the score-SDE view needs linear or cosine)
        raise SpecError("sampler", f"sampler {full.sampler!r}: {e}", full.sampler) from None
    gen = torch.Generator().manual_seed(full.seed)
    cond = None
    rows = len(full.guidance_grid) if full.guidance_grid else 1
    if model.num_classes:
        labels = resolve_labels(full.labels, full.n, model.num_classes, gen)
        scales = torch.tensor(full.guidance_grid).repeat_interleave(full.n) if full.guidance_grid else full.guidance
        assert scales is not None
        cond = Conditioning.of(labels.repeat(rows), scales, model.num_classes, full.guidance_interval)
    return SamplingRun(full, plan, (full.n * rows, *model.sample_shape), gen, cond, start)
