"""The model file: one ``.safetensors`` with the EMA UNet weights and a ``ddpm.config`` JSON.

safetensors holds raw tensors only, so loading a model file never executes code. Every failure
raises :class:`ModelFileError` with a one-line message that says what is wrong and where.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..assets import ASSET_DIR
from ..diffusion.gaussian import PREDICTIONS, VARIANCES, GaussianDiffusion
from ..diffusion.schedule import NoiseSchedule
from ..models.unet import UNet, UNetConfig, build_model, count_parameters
from .atomic import save_safetensors_atomic

FORMAT = "ddpm-demo/1"
META_KEY = "ddpm.config"
#: The unconditional MNIST-5k model; also the prior of the default model's "no label" rows.
UNCONDITIONAL_MODEL = ASSET_DIR / "mnist5k.safetensors"
#: The class-conditional model fine-tuned from it: the bundled default (BENCHMARKS.md §8).
DEFAULT_MODEL = ASSET_DIR / "mnist5k-cond.safetensors"
#: The unconditional model that answers the bundled default's "no label" rows (guidance's ε_u); with it
#: the default beats its own label-dropout branch on FLD at the same accuracy, and "none" is exactly
#: the unconditional model (BENCHMARKS.md §8).
DEFAULT_PRIOR = UNCONDITIONAL_MODEL


class ModelFileError(ValueError):
    """A model file that is missing, unreadable, not ours, or does not match its config."""


@dataclass
class DiffusionConfig:
    """How a model was trained: the schedule and the parameterization."""

    schedule: Literal["linear", "cosine"] = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    max_beta: float = 0.999
    prediction: Literal["eps", "x0", "v"] = "eps"
    variance: Literal["fixed_small", "fixed_large"] = "fixed_small"
    clip_sample: bool = True
    clip_range: float = 1.0
    betas: list[float] | None = None  # exact betas (e.g. from a diffusers config) override the named schedule

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")
        if int(self.T) < 1:
            raise ValueError(f"T must be ≥ 1, got {self.T}")

    def build_schedule(self) -> NoiseSchedule:
        if self.betas is not None:
            return NoiseSchedule(self.betas)
        if self.schedule == "linear":
            return NoiseSchedule.linear(self.T, self.beta_start, self.beta_end)
        return NoiseSchedule.cosine(self.T, self.cosine_s, self.max_beta)

    def build(self) -> GaussianDiffusion:
        # No clipping is clipping to (−∞, ∞): samplers keep one code path.
        r = self.clip_range if self.clip_sample else math.inf
        return GaussianDiffusion(self.build_schedule(), self.prediction, self.variance, clip_range=(-r, r))


@dataclass
class ModelCard:
    """Everything in ``ddpm.config``: architecture, diffusion, data and training facts."""

    model: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    name: str = "ddpm"

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "name": self.name,
                "model": self.model.to_dict(),
                "diffusion": self.diffusion.__dict__,
                "data": self.data,
                "training": self.training,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, where: str = "model file") -> ModelCard:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFileError(f"{where}: '{META_KEY}' metadata is not valid JSON ({e.msg})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ModelFileError(f"{where}: '{META_KEY}' has format {got!r}, expected {FORMAT!r}")
        try:
            return cls(
                model=UNetConfig.from_dict(d["model"]),
                diffusion=DiffusionConfig(**d.get("diffusion", {})),
                data=dict(d.get("data", {})),
                training=dict(d.get("training", {})),
                name=str(d.get("name", "ddpm")),
            )
        except KeyError as e:
            raise ModelFileError(f"{where}: '{META_KEY}' lacks the key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"{where}: '{META_KEY}' is invalid: {e}") from None

    def trained_total(self, key: Literal["steps", "images_seen"]) -> int | None:
        """A training count over the whole history: a fine-tuned file adds its ``init_<key>``; None if unrecorded."""
        here = self.training.get(key)
        if here is None:
            return None
        return int(here) + int(self.training.get(f"init_{key}") or 0)

    @property
    def value_range(self) -> tuple[float, float]:
        lo, hi = self.data.get("value_range", (-1.0, 1.0))
        return float(lo), float(hi)


@dataclass
class LoadedModel:
    """A model ready to sample: the network (eval mode), its diffusion and its card."""

    net: nn.Module
    diffusion: GaussianDiffusion
    card: ModelCard
    path: Path
    prior_path: Path | None = None  # the unconditional model answering "no label" rows, if one was paired

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.card.model
        return (c.in_channels, c.image_size, c.image_size)

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional model (its labels are 0 … num_classes − 1), 0 if unconditional."""
        return int(getattr(self.card.model, "num_classes", 0))

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.net)


def save_model_file(path: str | os.PathLike, net: nn.Module, card: ModelCard) -> Path:
    """Write ``net``'s weights and ``card`` atomically (temp file, fsync, rename)."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    return save_safetensors_atomic(path, tensors, {META_KEY: card.to_json()})


_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol ≥ 2, or torch.save's zip


def read_card(path: str | os.PathLike) -> ModelCard:
    """Read and validate only the metadata of a model file."""
    path = _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    if META_KEY not in meta:
        raise ModelFileError(f"{path}: safetensors file has no '{META_KEY}' metadata; export it with `ddpm export`")
    return ModelCard.from_json(meta[META_KEY], str(path))


def load_safetensors_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """Load one ``.safetensors`` model file onto ``device`` in eval mode."""
    path = _check_path(path)
    card = read_card(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: tensors could not be read ({_first_line(e)})") from None
    net = build_model(card.model)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"{path}: weights do not match the config: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(extra)} unexpected (e.g. {extra[:2]})"
        )
    bad = [(k, tuple(tensors[k].shape), tuple(v.shape)) for k, v in expected.items() if tensors[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise ModelFileError(f"{path}: tensor {k!r} has shape {got}, the config needs {want} ({len(bad)} mismatched)")
    net.load_state_dict(tensors)
    net.to(device).eval().requires_grad_(False)
    if isinstance(net, UNet) and torch.device(device).type == "cpu":
        net.use_channels_last()  # NHWC convolutions are faster on CPU; GPUs keep NCHW
    return LoadedModel(net=net, diffusion=card.diffusion.build(), card=card, path=path)


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such model file")
    if not p.is_file():
        raise ModelFileError(f"{p}: is not a file")
    with open(p, "rb") as f:
        head = f.read(9)
    # A safetensors header length can itself start with 0x80 (e.g. 6528 bytes), so the pickle
    # sniff only applies to files that do not frame a JSON header the safetensors way.
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    framed = head[8:9] == b"{" and 0 < header_len <= p.stat().st_size - 8
    if not framed and head.startswith(_PICKLE_MAGIC):
        raise ModelFileError(f"{p}: looks like a pickle/torch.save file; only .safetensors model files are loaded")
    if len(head) < 9:
        raise ModelFileError(f"{p}: file is truncated ({len(head)} bytes)")
    return p


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
