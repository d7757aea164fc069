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

from ..diffusion.schedule import NoiseSchedule
from ..models.unet import UNetConfig
from .modelfile import DiffusionConfig, LoadedModel, ModelCard, ModelFileError

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
    """Wraps a ``UNet2DModel`` behind the engine's ``model(x_t, t, y) -> output`` interface.

    A class-conditional one (``num_class_embeds`` = classes + 1) keeps its last row for "no label",
    as our UNet does.
    """

    def __init__(self, unet: nn.Module, num_classes: int = 0) -> None:
        super().__init__()
        self.unet = unet
        self.null_label = num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)``, labels ``y`` ``(B,)`` → ``(B, C, H, W)``."""
        if not self.null_label:
            if y is not None:
                raise ValueError("labels given to an unconditional network")
            return self.unet(x, t).sample
        if y is None:
            y = torch.full_like(t, self.null_label)
        return self.unet(x, t, class_labels=y).sample


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
        name = unet_cfg.get("_class_name")
        raise ModelFileError(f"{unet_dir}: _class_name={name!r}; only UNet2DModel is supported")
    diffusion = diffusion_config_from_scheduler(json.loads(sched_file.read_text()), str(sched_file))
    diffusers = _require_diffusers()
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True, low_cpu_mem_usage=False)
    except OSError as e:  # diffusers raises OSError for missing/unsafe weights
        raise ModelFileError(f"{unet_dir}: {str(e).splitlines()[0]}") from None
    num_classes = _imported_classes(unet.config, path if (path / "model_index.json").exists() else unet_dir)
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
            num_classes=num_classes,
        ),
        diffusion=diffusion,
        data={"dataset": path.name, "value_range": [-1.0, 1.0], "channels": unet.config.in_channels,
              "image_size": size},
        training={"source": "diffusers", "folder": str(path)},
        name=path.name,
    )
    net = DiffusersUNet(unet, num_classes).to(device).eval().requires_grad_(False)
    return LoadedModel(net=net, diffusion=diffusion.build(), card=card, path=path)


def _imported_classes(cfg: Any, folder: Path) -> int:
    """Classes of a class-conditional UNet2DModel, or 0.

    Classifier-free guidance needs a "no label" row, and a UNet2DModel config does not say which row
    that is; the ``ddpm_card.json`` our export writes does (the last of ``num_class_embeds``). Anything
    else is refused by name rather than guessed.
    """
    rows, kind = cfg.get("num_class_embeds"), cfg.get("class_embed_type")
    if kind is not None:
        raise ModelFileError(f"{folder}: class_embed_type={kind!r} is not supported (only None, a label table)")
    if not rows:
        return 0
    card_file = folder / "ddpm_card.json"
    card = json.loads(card_file.read_text()).get("model", {}) if card_file.exists() else {}
    if card.get("num_classes") != rows - 1:
        raise ModelFileError(f"{folder}: num_class_embeds={rows} without a ddpm_card.json naming num_classes "
                             f"{rows - 1}: which row means 'no label' is unknown")
    return rows - 1


# ----------------------------------------------------------------------------- export
def _exact_export_blockers(loaded: LoadedModel) -> list[str]:
    """Why our model cannot be written as an exactly equivalent UNet2DModel (empty: it can)."""
    c, why = loaded.card.model, []
    if c.arch != "unet":
        why.append(f"arch {c.arch!r} has no UNet2DModel equivalent (only 'unet' does)")
        return why
    if c.num_heads != 1:
        why.append("num_heads > 1 (UNet2DModel splits heads by a fixed head dim)")
    widths = {c.ch * m for m in c.ch_mult}
    if any(w % c.norm_groups for w in widths | {c.ch}):
        why.append(f"norm_groups={c.norm_groups} does not divide every width {sorted(widths)}")
    if c.image_size % (2 ** (len(c.ch_mult) - 1)):
        why.append(f"image_size {c.image_size} is not divisible by 2^{len(c.ch_mult) - 1}; UNet2DModel upsamples ×2")
    return why


def _map_state_dict(net: nn.Module, levels: int, num_res_blocks: int) -> dict[str, Tensor]:
    """Rename our UNet's weights to UNet2DModel's keys (same math, different names)."""
    sd = net.state_dict()
    out: dict[str, Tensor] = {}

    def res(src: str, dst: str) -> None:
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("temb", "time_emb_proj"), ("norm2", "norm2"),
                     ("conv2", "conv2"), ("skip", "conv_shortcut")):
            for p in ("weight", "bias"):
                if f"{src}.{a}.{p}" in sd:
                    out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]

    def attn(src: str, dst: str) -> None:
        copy(f"{src}.norm", f"{dst}.group_norm")
        w, b = sd[f"{src}.qkv.weight"][:, :, 0, 0], sd[f"{src}.qkv.bias"]
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            ch = w.shape[0] // 3
            out[f"{dst}.{name}.weight"], out[f"{dst}.{name}.bias"] = w[i * ch:(i + 1) * ch], b[i * ch:(i + 1) * ch]
        out[f"{dst}.to_out.0.weight"] = sd[f"{src}.proj.weight"][:, :, 0, 0]
        out[f"{dst}.to_out.0.bias"] = sd[f"{src}.proj.bias"]

    def copy(src: str, dst: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    copy("time_mlp.0", "time_embedding.linear_1")
    copy("time_mlp.2", "time_embedding.linear_2")
    if "class_emb.weight" in sd:
        out["class_embedding.weight"] = sd["class_emb.weight"]
    copy("conv_in", "conv_in")
    def levels_of(ours: str, theirs: str, blocks_per_level: int, resampler: str) -> None:
        """Our flat ``down.i``/``up.i`` list → diffusers' per-level resnets, attentions and resampler."""
        i = 0
        for level in range(levels):
            for j in range(blocks_per_level):
                res(f"{ours}.{i}.0", f"{theirs}.{level}.resnets.{j}")
                if f"{ours}.{i}.1.qkv.weight" in sd:
                    attn(f"{ours}.{i}.1", f"{theirs}.{level}.attentions.{j}")
                i += 1
            if level != levels - 1:
                copy(f"{ours}.{i}.0.conv", f"{theirs}.{level}.{resampler}.0.conv")
                i += 1

    levels_of("down", "down_blocks", num_res_blocks, "downsamplers")
    res("mid.0", "mid_block.resnets.0")
    attn("mid.1", "mid_block.attentions.0")
    res("mid.2", "mid_block.resnets.1")
    levels_of("up", "up_blocks", num_res_blocks + 1, "upsamplers")
    copy("out.0", "conv_norm_out")
    copy("out.2", "conv_out")
    return out


def _scheduler_config(d: DiffusionConfig) -> dict[str, Any]:
    inverse_pred = {v: k for k, v in _PREDICTION.items()}
    cfg: dict[str, Any] = {
        "num_train_timesteps": d.T,
        "prediction_type": inverse_pred[d.prediction],
        "variance_type": d.variance,
        "clip_sample": d.clip_sample,
        "clip_sample_range": d.clip_range,
        "beta_start": d.beta_start,
        "beta_end": d.beta_end,
    }
    if d.betas is not None:
        cfg.update(beta_schedule="linear", trained_betas=list(d.betas))
    elif d.schedule == "linear":
        cfg["beta_schedule"] = "linear"
    elif d.cosine_s == 0.008 and d.max_beta == 0.999:
        cfg["beta_schedule"] = "squaredcos_cap_v2"
    else:
        cfg.update(beta_schedule="linear", trained_betas=d.build_schedule().betas.tolist())
    return cfg


def export_diffusers(loaded: LoadedModel, out_dir: str | Path, atol: float = 1e-4) -> Path:
    """Write ``loaded`` as a diffusers ``DDPMPipeline`` folder, only if the mapping is exact.

    Exactness is checked, not assumed: both networks run on the same random inputs and the
    export is refused if they differ by more than ``atol``.
    """
    blockers = _exact_export_blockers(loaded)
    if blockers:
        raise ModelFileError("cannot export to diffusers exactly: " + "; ".join(blockers))
    diffusers = _require_diffusers()
    c = loaded.card.model
    levels = len(c.ch_mult)
    res_per_level = [c.image_size // 2**i for i in range(levels)]
    attn = [r in c.attn_resolutions for r in res_per_level]
    unet = diffusers.UNet2DModel(
        sample_size=c.image_size, in_channels=c.in_channels, out_channels=c.out_channels,
        block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=c.norm_groups, dropout=c.dropout, flip_sin_to_cos=False, freq_shift=0,
        resnet_time_scale_shift="scale_shift" if c.scale_shift else "default", attention_head_dim=None,
        downsample_padding=1, act_fn="silu", norm_eps=1e-5, attn_norm_num_groups=c.norm_groups,
        num_class_embeds=c.num_classes + 1 if c.num_classes else None,
    )
    net = loaded.net.cpu().float()
    mapped = _map_state_dict(net, levels, c.num_res_blocks)
    missing, unexpected = unet.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ModelFileError(f"cannot export to diffusers exactly: unmapped weights {list(missing)[:3]} "
                             f"{list(unexpected)[:3]}")
    unet.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, c.in_channels, c.image_size, c.image_size, generator=g)
    t = torch.tensor([0, loaded.diffusion.T // 2, loaded.diffusion.T - 1])
    # A conditional network is compared on a class, the last class and "no label".
    y = torch.tensor([0, c.num_classes - 1, c.num_classes]) if c.num_classes else None
    with torch.inference_mode():
        diff = (DiffusersUNet(unet, c.num_classes)(x, t, y) - net(x, t, y)).abs().max().item()
    if diff > atol:
        raise ModelFileError(f"cannot export to diffusers exactly: outputs differ by {diff:.2e} (> {atol:g})")
    sched = diffusers.DDPMScheduler.from_config(_scheduler_config(loaded.card.diffusion))
    out_dir = Path(out_dir)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "ddpm_card.json").write_text(loaded.card.to_json())
    return out_dir
