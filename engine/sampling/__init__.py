"""Sampling: a request spec, a plan of per-step coefficients, the one step function and the one stepper.

``spec`` declares every request field and resolves a request against a model; ``spacing`` picks the
timesteps, ``solvers`` turns a sampler into update coefficients, ``plan`` packs them per step and per
sample, ``step`` applies one update, ``guidance`` wraps a network into what the stepper calls,
``stepper`` advances a batch of runs by one model call, and ``loop`` drives one run offline.
"""

from .defaults import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, GUIDED_DEFAULT_SAMPLER
from .guidance import Conditioning, Denoiser, Labels, as_denoiser, guided_forward, resolve_labels
from .loop import last_frame, run_frames, sample, sample_iter
from .ode import OdePlan
from .plan import SamplingPlan, StepCoeffs, steps_limit
from .solvers import DEFAULT_ETA, SAMPLER_INFO, SAMPLERS, SamplerName, takes_eta
from .spacing import DEFAULT_SPACING, SPACINGS, Spacing
from .spec import (
    GUIDANCE_RANGE,
    MAX_SEED,
    SamplingRun,
    SamplingSpec,
    ServerDefaults,
    SpecError,
    Start,
    complete,
    parse_interval,
    resolve,
)
from .step import History, draw_noise, sampling_step
from .stepper import AnyLane, Lane, SampleFrame, Stepper

__all__ = [
    "DEFAULT_ETA",
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLER",
    "DEFAULT_SPACING",
    "GUIDANCE_RANGE",
    "GUIDED_DEFAULT_SAMPLER",
    "MAX_SEED",
    "SAMPLERS",
    "SAMPLER_INFO",
    "SPACINGS",
    "AnyLane",
    "Conditioning",
    "Denoiser",
    "History",
    "Labels",
    "Lane",
    "OdePlan",
    "SampleFrame",
    "SamplerName",
    "SamplingPlan",
    "SamplingRun",
    "SamplingSpec",
    "ServerDefaults",
    "Spacing",
    "SpecError",
    "Start",
    "StepCoeffs",
    "Stepper",
    "as_denoiser",
    "complete",
    "draw_noise",
    "guided_forward",
    "last_frame",
    "parse_interval",
    "resolve",
    "resolve_labels",
    "run_frames",
    "sample",
    "sample_iter",
    "sampling_step",
    "steps_limit",
    "takes_eta",
]
