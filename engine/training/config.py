"""Training configuration, its named presets (recipes), and the rules for changing a run on resume.

Each :class:`TrainConfig` field carries its own help text and limits in ``metadata``: the config validates
itself from them, and ``ddpm train`` generates its flags from them (:mod:`engine.cli.train`), so a flag's
name, type, choices and help are the field's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..data.datasets import DatasetName
from ..diffusion.losses import TimestepSampling, Weighting
from ..io.modelfile import DiffusionConfig
from ..models.unet import PRESETS as MODEL_PRESETS
from ..models.unet import UNetConfig, preset_config
from ..options import config_types, literal_choices, option, out_of_bounds


@dataclass
class TrainConfig:
    """Everything a run needs; written whole to ``config.json`` in the run directory."""

    preset: str = option("mnist", flag=False, help="the recipe the run started from")
    model: UNetConfig = option(default_factory=lambda: preset_config("mnist"), flag=False, help="the network")
    diffusion: DiffusionConfig = option(default_factory=DiffusionConfig, flag=False, help="schedule and target")
    dataset: DatasetName = option("mnist5k", help="training data")
    data_root: str | None = option(None, metavar="DIR",
                                   help="folder with the dataset's files (torchvision layout, or any image folder)")
    download: bool = option(False, help="let torchvision download the dataset (needs internet)")
    batch_size: int = option(64, ge=1, help="images per optimizer step, over all processes")
    lr: float = option(2e-4, gt=0, help="AdamW learning rate after warmup")
    weight_decay: float = option(0.0, ge=0, help="AdamW weight decay")
    adam_betas: tuple[float, float] = option((0.9, 0.999), flag=False, help="AdamW betas")
    warmup_steps: int = option(200, ge=0, help="linear learning-rate warmup steps")
    lr_decay: Literal["constant", "cosine"] = option(
        "constant", help="after warmup: constant, or cosine down to lr × lr-min-ratio at max-steps")
    lr_min_ratio: float = option(0.1, ge=0, le=1, help="where the cosine decay ends, as a fraction of lr")
    grad_clip: float | None = option(1.0, gt=0, zero_is_off=True, help="clip the gradient norm to this; 0 disables")
    ema_decay: float | None = option(0.999, gt=0, lt=1, zero_is_off=True,
                                     help="EMA of the weights, exported for sampling; 0 disables (raw weights)")
    ema_warmup: bool = option(True, help="EMA decay after n updates is min(ema-decay, (1 + n) / (10 + n))")
    timestep_sampling: TimestepSampling = option("uniform", help="training t: uniform, or proportional to β_t")
    weighting: Weighting = option("none", help="loss weighting: none, or min-SNR (Hang et al. 2023)")
    min_snr_gamma: float = option(5.0, gt=0, help="γ of the min-SNR weighting")
    label_dropout: float = option(0.1, ge=0, lt=1, help="share of labels replaced by 'no label' (class-conditional "
                                  "models), so one network learns both branches of classifier-free guidance")
    class_lr_scale: float = option(1.0, gt=0, help="the class embedding's learning rate as a multiple of lr "
                                   "(class-conditional models): an embedding added at zero to a trained network "
                                   "otherwise learns far slower than the weights around it")
    max_steps: int = option(10_000, ge=1, help="stop after this many optimizer steps")
    max_minutes: float | None = option(None, gt=0, help="also stop after this many minutes (this session)")
    grad_accum: int = option(1, ge=1, help="split each batch into this many micro-batches")
    seed: int = option(0, help="seeds the weights, the data order, t and the noise")
    init_from: str | None = option(None, metavar="MODEL_FILE",
                                   help="start from this model file's weights (same network and schedule), "
                                        "e.g. to fine-tune")
    # The init file's training history, copied from its card when the run starts.
    init_steps: int = option(0, flag=False, help="steps behind the init_from file")
    init_images_seen: int = option(0, flag=False, help="images behind the init_from file")
    device: str = option("auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    amp: Literal["auto", "off", "bf16", "fp16"] = option("auto", help="mixed precision on CUDA")
    channels_last: bool = option(False, help="NHWC memory format (faster on CPU)")
    compile: bool = option(False, help="torch.compile the model (opt-in)")
    log_every: int = option(25, ge=1, help="a metrics.jsonl row every this many steps")
    sample_every: int = option(500, ge=0, help="a sample grid every this many steps; 0 never")
    ckpt_every: int = option(250, ge=1, help="a checkpoint every this many steps")
    ckpt_minutes: float = option(5.0, gt=0, help="also a checkpoint at least this often, so a kill loses little")
    keep_last: int = option(3, ge=1, help="checkpoints kept")
    nan_patience: int = option(20, ge=1, help="stop after this many non-finite steps in a row")
    fault_nan_steps: tuple[int, ...] = option((), flag=False,
                                              help="fault injection for tests: NaN loss on these attempts (1-based)")

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = UNetConfig.from_dict(self.model)
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]
        self.fault_nan_steps = tuple(int(s) for s in self.fault_nan_steps)
        self.validate()

    def validate(self) -> None:
        """Apply the fields' "0 is off" rules, then check their choices and bounds; raises ValueError."""
        hints = config_types(TrainConfig)
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("zero_is_off") and value == 0:
                setattr(self, f.name, value := None)
            choices = literal_choices(hints[f.name])
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")
            if value is not None and (why := out_of_bounds(value, meta)):
                raise ValueError(f"{f.name} {why}, got {value!r}")
        if self.class_lr_scale != 1 and not self.model.num_classes:
            raise ValueError(f"class_lr_scale {self.class_lr_scale} needs a class-conditional model (num_classes > 0)")
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
    # The tutorial's recipe, kept as a baseline: its SimpleUNet, linear schedule, L_simple, AdamW 1e-4,
    # no EMA, no warmup, no clipping.
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
    """A :class:`TrainConfig` from a named recipe, with overrides (``model`` may be a preset name).

    ``model_overrides`` and ``diffusion_overrides`` change single keys of the preset's network and diffusion.
    """
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


# ------------------------------------------------------------------------------ changes on resume
# What a resumed run may change: how long, how fast and how often it runs, and the rate it learns at.
# Everything else decides what is trained (the network, the diffusion, the data and its order, the
# objective, the starting weights) and a checkpoint is only the continuation of those.
RESUMABLE = frozenset({
    "max_steps", "max_minutes",                               # budgets
    "lr", "warmup_steps", "lr_decay", "lr_min_ratio", "class_lr_scale",  # learning rates, applied from this step
    "grad_clip", "nan_patience", "ema_decay",                 # update guards; the EMA's horizon (not on/off)
    "log_every", "sample_every", "ckpt_every", "ckpt_minutes", "keep_last",  # outputs
    "device", "amp", "channels_last", "compile", "grad_accum", "download",   # execution, not the numbers' meaning
})
# Test-only fault injection; a resumed run counts its attempts afresh.
_NOT_COMPARED = frozenset({"fault_nan_steps"})
# The network and diffusion keys that have flags, by the name of their flag (``--ch``, ``--T``, ...).
NESTED_FLAGS: dict[str, tuple[str, str]] = {
    "ch": ("model", "the UNet's width (channels at its first level)"),
    "dropout": ("model", "dropout in the UNet's residual blocks"),
    "schedule": ("diffusion", "the noise schedule"),
    "T": ("diffusion", "diffusion steps"),
    "prediction": ("diffusion", "what the network predicts: ε, x0 or v"),
    "num_classes": ("model", "class-conditional with this many classes (labels 0 … n−1); 0: unconditional "
                             "(default: the dataset's, 10 for the digit sets and CIFAR-10, an image folder's "
                             "subfolders)"),
}


def flat_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as one flat mapping: top-level fields, then the network's and diffusion's keys
    (by their flag name where they have a flag, else as ``model.key`` / ``diffusion.key``)."""
    d = cfg.to_dict()
    flat = {k: v for k, v in d.items() if k not in ("model", "diffusion")}
    for part in ("model", "diffusion"):
        for k, v in d[part].items():
            flat[k if NESTED_FLAGS.get(k, ("",))[0] == part else f"{part}.{k}"] = v
    return flat


def resume_changes(saved: TrainConfig, new: TrainConfig) -> dict[str, list[Any]]:
    """``{name: [old, new]}`` for what ``new`` changes in a run saved as ``saved``.

    Raises ValueError naming every change a resumed run cannot make (see :data:`RESUMABLE`); switching
    the EMA on or off is one, since the checkpoint has no average to continue, or one would be dropped.
    """
    old, cur = flat_config(saved), flat_config(new)
    changes = {k: [old.get(k), cur.get(k)] for k in cur if old.get(k) != cur.get(k) and k not in _NOT_COMPARED}
    refused = sorted(_flag(k) for k in changes if k not in RESUMABLE)
    if "ema_decay" in changes and None in changes["ema_decay"]:
        refused.append("--ema-decay 0 or back (the EMA on or off)")
    if refused:
        allowed = " ".join(sorted(_flag(k) for k in RESUMABLE))
        raise ValueError(f"--resume cannot change {', '.join(refused)}: that decides what the run trains; start a "
                         f"new --run-dir (--init-from keeps the weights). A resume may change: {allowed}")
    return changes


def _flag(name: str) -> str:
    """``batch_size`` → ``--batch-size``; a nested key without a flag (``model.norm_groups``) stays as it is."""
    return name if "." in name else "--" + name.replace("_", "-")
