"""Interop with 🤗 diffusers: serve a saved DDPM pipeline folder, export ours where it maps exactly.

Optional: needs ``pip install -e '.[diffusers]'``. A folder written by ``save_pretrained`` is
either a pipeline (``model_index.json`` with ``unet/`` and ``scheduler/``) or a bare
``UNet2DModel`` folder (``config.json`` + weights) with ``scheduler_config.json`` beside it.
The scheduler config maps onto :class:`DiffusionConfig`; any option we cannot reproduce exactly
is refused by name instead of being silently approximated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .modelfile import DiffusionConfig, LoadedModel, ModelCard, ModelFileError
from .schedule import NoiseSchedule
from .unet import UNetConfig

_PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VARIANCE = {"fixed_small": "fixed_small", "fixed_large": "fixed_large"}
_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ModelFileError(
            "this is a diffusers folder; install the optional extra: pip install -e '.[diffusers]'"
        ) from None
    return diffusers


class DiffusersUNet(nn.Module):
    """Wraps a ``UNet2DModel`` behind the engine's ``model(x_t, t) -> output`` interface."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` → ``(B, C, H, W)``."""
        return self.unet(x, t).sample


def diffusion_config_from_scheduler(cfg: dict[str, Any], where: str = "scheduler_config.json") -> DiffusionConfig:
    """Map a DDPM/DDIM scheduler config onto ours, refusing options that have no exact match."""

    def refuse(option: str, value: Any, supported: Any) -> ModelFileError:
        return ModelFileError(f"{where}: {option}={value!r} is not supported (supported: {supported})")

    schedule = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is None and schedule not in _SCHEDULES:
        raise refuse("beta_schedule", schedule, ", ".join(_SCHEDULES))
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in _PREDICTION:
        raise refuse("prediction_type", prediction, ", ".join(_PREDICTION))
    variance = cfg.get("variance_type", "fixed_small")
    if variance not in _VARIANCE:
        raise refuse("variance_type", variance, ", ".join(_VARIANCE))
    for flag in ("thresholding", "rescale_betas_zero_snr"):
        if cfg.get(flag):
            raise refuse(flag, True, "false")
    return DiffusionConfig(
        schedule="linear",  # placeholder: the exact betas are carried in `betas`
        T=int(cfg.get("num_train_timesteps", 1000)),
        beta_start=float(cfg.get("beta_start", 1e-4)),
        beta_end=float(cfg.get("beta_end", 0.02)),
        prediction=_PREDICTION[prediction],  # type: ignore[arg-type]
        variance=_VARIANCE[variance],  # type: ignore[arg-type]
        clip_sample=bool(cfg.get("clip_sample", True)),
        clip_range=float(cfg.get("clip_sample_range", 1.0)),
        betas=_betas(cfg, schedule).tolist(),
    )


def _betas(cfg: dict[str, Any], schedule: str) -> Tensor:
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        return torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if schedule == "linear":
        return NoiseSchedule.linear(T, b0, b1).betas
    if schedule == "scaled_linear":
        return torch.linspace(math.sqrt(b0), math.sqrt(b1), T, dtype=torch.float64) ** 2
    return NoiseSchedule.cosine(T, 0.008, 0.999).betas  # squaredcos_cap_v2 is Nichol & Dhariwal's


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "model_index.json").exists() or (path / "scheduler_config.json").exists())


def load_diffusers_folder(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a diffusers DDPM/DDIM pipeline folder (or UNet folder + scheduler_config.json)."""
    path = Path(path)
    if (path / "model_index.json").exists():
        unet_dir, sched_file = path / "unet", path / "scheduler" / "scheduler_config.json"
    else:
        unet_dir, sched_file = path, path / "scheduler_config.json"
    if not sched_file.exists():
        raise ModelFileError(f"{path}: no scheduler config at {sched_file}")
    if not (unet_dir / "config.json").exists():
        raise ModelFileError(f"{path}: no UNet config at {unet_dir / 'config.json'}")
    unet_cfg = json.loads((unet_dir / "config.json").read_text())
    if unet_cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ModelFileError(f"{unet_dir}: _class_name={unet_cfg.get('_class_name')!r}; only UNet2DModel is supported")
    diffusion = diffusion_config_from_scheduler(json.loads(sched_file.read_text()), str(sched_file))
    diffusers = _require_diffusers()
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True, low_cpu_mem_usage=False)
    except OSError as e:  # diffusers raises OSError for missing/unsafe weights
        raise ModelFileError(f"{unet_dir}: {str(e).splitlines()[0]}") from None
    size = unet.config.sample_size
    size = size[0] if isinstance(size, list | tuple) else int(size)
    mults = [c // unet.config.block_out_channels[0] for c in unet.config.block_out_channels]
    card = ModelCard(
        model=UNetConfig(
            arch="diffusers",
            image_size=size,
            in_channels=unet.config.in_channels,
            out_channels=unet.config.out_channels,
            ch=unet.config.block_out_channels[0],
            ch_mult=tuple(mults),
            num_res_blocks=unet.config.layers_per_block,
            attn_resolutions=(),
        ),
        diffusion=diffusion,
        data={"dataset": path.name, "value_range": [-1.0, 1.0], "channels": unet.config.in_channels,
              "image_size": size},
        training={"source": "diffusers", "folder": str(path)},
        name=path.name,
    )
    net = DiffusersUNet(unet).to(device).eval().requires_grad_(False)
    return LoadedModel(net=net, diffusion=diffusion.build(), card=card, path=path)
