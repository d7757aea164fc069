"""DDPM engine: schedules, diffusion math, samplers, the UNet, training and metrics (pure PyTorch)."""

from .devices import resolve_device
from .diffusion.gaussian import GaussianDiffusion, Prediction, Variance
from .diffusion.likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl
from .diffusion.losses import loss_weights, sample_timesteps, simple_loss
from .diffusion.respace import RespacedSchedule, respace, select_timesteps
from .diffusion.schedule import NoiseSchedule
from .io.images import to_uint8
from .io.loader import load_model, load_model_file, with_unconditional_prior
from .io.modelfile import (
    DEFAULT_MODEL,
    DEFAULT_PRIOR,
    UNCONDITIONAL_MODEL,
    DiffusionConfig,
    LoadedModel,
    ModelCard,
    ModelFileError,
    read_card,
    save_model_file,
)
from .models.unet import PRESETS, UNet, UNetConfig, build_model, count_parameters, preset_config
from .sampling import (
    DEFAULT_SAMPLER,
    SAMPLER_INFO,
    SAMPLERS,
    SPACINGS,
    Conditioning,
    SampleFrame,
    SamplingChoice,
    SamplingPlan,
    StepCoeffs,
    choose,
    draw_noise,
    guided_forward,
    resolve_labels,
    sample,
    sample_iter,
    sampling_step,
    steps_limit,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRIOR",
    "DEFAULT_SAMPLER",
    "PRESETS",
    "SAMPLERS",
    "SAMPLER_INFO",
    "SPACINGS",
    "UNCONDITIONAL_MODEL",
    "Conditioning",
    "DiffusionConfig",
    "GaussianDiffusion",
    "LoadedModel",
    "ModelCard",
    "ModelFileError",
    "NoiseSchedule",
    "Prediction",
    "RespacedSchedule",
    "SampleFrame",
    "SamplingChoice",
    "SamplingPlan",
    "StepCoeffs",
    "UNet",
    "UNetConfig",
    "Variance",
    "bits_per_dim",
    "build_model",
    "choose",
    "count_parameters",
    "discretized_gaussian_log_likelihood",
    "draw_noise",
    "guided_forward",
    "load_model",
    "load_model_file",
    "loss_weights",
    "normal_kl",
    "preset_config",
    "read_card",
    "resolve_device",
    "resolve_labels",
    "respace",
    "sample",
    "sample_iter",
    "sample_timesteps",
    "sampling_step",
    "save_model_file",
    "select_timesteps",
    "simple_loss",
    "steps_limit",
    "to_uint8",
    "with_unconditional_prior",
]
