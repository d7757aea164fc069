"""Training configuration and its named presets (recipes)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..diffusion.losses import TimestepSampling, Weighting
from ..io.modelfile import DiffusionConfig
from ..models.unet import PRESETS as MODEL_PRESETS
from ..models.unet import UNetConfig, preset_config


@dataclass
class TrainConfig:
    """Everything a run needs; written whole to ``config.json`` in the run directory."""

    preset: str = "mnist"
    model: UNetConfig = field(default_factory=lambda: preset_config("mnist"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    dataset: str = "mnist5k"
    data_root: str | None = None
    download: bool = False
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 200
    lr_decay: Literal["constant", "cosine"] = "constant"  # cosine: down to lr × lr_min_ratio at max_steps
    lr_min_ratio: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999  # None: no EMA, the raw weights are exported (the seed's recipe)
    ema_warmup: bool = True  # decay_n = min(ema_decay, (1 + n) / (10 + n))
    timestep_sampling: TimestepSampling = "uniform"
    weighting: Weighting = "none"
    min_snr_gamma: float = 5.0
    max_steps: int = 10_000
    max_minutes: float | None = None
    grad_accum: int = 1
    seed: int = 0
    init_from: str | None = None  # a model file whose weights start the model and its EMA (fine-tuning)
    init_steps: int = 0  # that file's training history, copied from its card when the run starts
    init_images_seen: int = 0
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    log_every: int = 25
    sample_every: int = 500
    ckpt_every: int = 250
    ckpt_minutes: float = 5.0  # also checkpoint at least this often, so a kill loses little
    keep_last: int = 3
    nan_patience: int = 20
    fault_nan_steps: tuple[int, ...] = ()  # fault injection for tests: NaN loss on these attempts (1-based)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = UNetConfig.from_dict(self.model)
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]
        self.fault_nan_steps = tuple(int(s) for s in self.fault_nan_steps)
        checks = {
            "batch_size": self.batch_size >= 1, "lr": self.lr > 0, "warmup_steps": self.warmup_steps >= 0,
            "max_steps": self.max_steps >= 1, "grad_accum": self.grad_accum >= 1, "keep_last": self.keep_last >= 1,
            "log_every": self.log_every >= 1, "sample_every": self.sample_every >= 0,
            "ckpt_every": self.ckpt_every >= 1, "nan_patience": self.nan_patience >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} is out of range: {getattr(self, name)!r}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError(f"lr_min_ratio must lie in [0, 1], got {self.lr_min_ratio}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1) or be None, got {self.ema_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**d)


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Ours for the bundled digits on a CPU: small UNet, EMA with warmup, warmup + clipping.
    "mnist": dict(model="mnist", dataset="mnist5k", batch_size=32, lr=5e-4, warmup_steps=100, grad_clip=1.0,
                  ema_decay=0.999, max_steps=100_000, diffusion=dict(schedule="linear")),
    # The seed tutorial's recipe: its SimpleUNet, linear schedule, L_simple, AdamW 1e-4, no EMA,
    # no warmup, no clipping (§7's code; §7.2 mentions clipping and EMA, the code has neither).
    "seed": dict(model="seed", dataset="mnist5k", batch_size=64, lr=1e-4, warmup_steps=0, grad_clip=None,
                 ema_decay=None, max_steps=100_000, diffusion=dict(schedule="linear")),
    # Ho et al. 2020, CIFAR-10: 35.7M UNet, lr 2e-4, batch 128, warmup 5000, dropout 0.1, EMA 0.9999, 800k steps.
    "cifar10": dict(model="cifar10", dataset="cifar10", batch_size=128, lr=2e-4, warmup_steps=5000, grad_clip=1.0,
                    ema_decay=0.9999, ema_warmup=False, max_steps=800_000, sample_every=10_000, ckpt_every=5000,
                    diffusion=dict(schedule="linear")),
    # For tests: 8×8 digits, a 48k-parameter UNet.
    "tiny": dict(model="tiny", dataset="mnist5k", batch_size=16, lr=1e-3, warmup_steps=5, grad_clip=1.0,
                 ema_decay=0.9, max_steps=20, log_every=5, sample_every=0, ckpt_every=5, diffusion=dict(T=100)),
}


def preset_train_config(name: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a named recipe, with overrides (``model`` may be a preset name)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
    d: dict[str, Any] = {**TRAIN_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    model = d.pop("model")
    model_over = d.pop("model_overrides", {}) or {}
    if isinstance(model, str):
        if model not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {model!r}")
        model = preset_config(model, **model_over)
    diffusion = d.pop("diffusion", {})
    diff_over = d.pop("diffusion_overrides", {}) or {}
    if isinstance(diffusion, dict):
        diffusion = DiffusionConfig(**{**diffusion, **diff_over})
    return TrainConfig(preset=name, model=model, diffusion=diffusion, **d)
