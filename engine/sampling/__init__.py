"""Sampling: a plan of per-step coefficients and the one step function every sampler shares.

``spacing`` picks the timesteps, ``solvers`` turns a sampler into update coefficients, ``plan``
packs them per step and per sample, ``step`` applies one update, and ``loop`` runs a plan offline.
"""

from .defaults import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, GUIDED_DEFAULT_SAMPLER, SamplingChoice, choose
from .guidance import Conditioning, LabelSpec, guided_forward, resolve_labels
from .loop import SampleFrame, sample, sample_iter
from .plan import SamplingPlan, StepCoeffs, steps_limit
from .solvers import DEFAULT_ETA, SAMPLER_INFO, SAMPLERS, SamplerName, takes_eta
from .spacing import DEFAULT_SPACING, SPACINGS, Spacing
from .step import History, Model, draw_noise, sampling_step

__all__ = [
    "DEFAULT_ETA",
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLER",
    "DEFAULT_SPACING",
    "GUIDED_DEFAULT_SAMPLER",
    "SAMPLERS",
    "SAMPLER_INFO",
    "SPACINGS",
    "Conditioning",
    "History",
    "LabelSpec",
    "Model",
    "SampleFrame",
    "SamplerName",
    "SamplingChoice",
    "SamplingPlan",
    "Spacing",
    "StepCoeffs",
    "choose",
    "draw_noise",
    "guided_forward",
    "resolve_labels",
    "sample",
    "sample_iter",
    "sampling_step",
    "steps_limit",
    "takes_eta",
]
