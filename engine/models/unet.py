"""The DDPM UNet (Ho et al. 2020), the tutorial's SimpleUNet (``arch: seed``), and named presets.

Both networks map ``(x_t, t)`` with x_t ``(B, C_in, H, W)`` and t ``(B,)`` (0-based indices,
long or float) to ``(B, C_out, H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Arch = Literal["unet", "seed", "diffusers"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``(B, dim)`` of timesteps ``(B,)``: [sin(t·ω_k), cos(t·ω_k)]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, time conditioning, GroupNorm → SiLU → dropout → conv, + skip.

    With ``scale_shift`` the time embedding gives (scale, shift) applied after the second
    norm, h = norm(h)·(1 + scale) + shift (improved-diffusion); otherwise it is added to h
    after the first conv (Ho et al.).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int,
                 scale_shift: bool) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch * (2 if scale_shift else 1))
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.temb(F.silu(temb))[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, ch: int, groups: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        # Interpolating to the skip's size (not ×2) keeps odd sizes such as 7 → 14 → 28 exact.
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


@dataclass
class UNetConfig:
    """Architecture hyper-parameters; serialised into model files as plain JSON."""

    arch: Arch = "unet"
    image_size: int = 28
    in_channels: int = 1
    out_channels: int = 1
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (7,)
    dropout: float = 0.0
    norm_groups: int = 32
    num_heads: int = 1
    scale_shift: bool = True
    num_classes: int = 0  # > 0: class-conditional, with one more embedding row meaning "no label"

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if self.arch not in ("unet", "seed", "diffusers"):
            raise ValueError(f"arch must be 'unet', 'seed' or 'diffusers', got {self.arch!r}")
        for name in ("image_size", "in_channels", "out_channels", "ch", "num_res_blocks", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if int(self.num_classes) < 0:
            raise ValueError(f"num_classes must be ≥ 0 (0 = unconditional), got {self.num_classes}")
        if self.num_classes and self.arch == "seed":
            raise ValueError(f"class conditioning needs arch 'unet' or 'diffusers', got {self.arch!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


class UNet(nn.Module):
    """The DDPM UNet: ch·mult channels per level, ResBlocks, attention at chosen resolutions."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        c = self.config = config
        g, temb = c.norm_groups, c.ch * 4
        self.time_mlp = nn.Sequential(nn.Linear(c.ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.class_emb = nn.Embedding(c.num_classes + 1, temb) if c.num_classes else None
        if self.class_emb is not None:
            # Zero rows make a network converted from an unconditional one compute the same function at first.
            nn.init.zeros_(self.class_emb.weight)
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, temb, c.dropout, g, c.scale_shift)

        self.down = nn.ModuleList()
        skips, ch, res_now = [c.ch], c.ch, c.image_size
        for level, mult in enumerate(c.ch_mult):
            for _ in range(c.num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, c.ch * mult)]))
                ch = c.ch * mult
                if res_now in c.attn_resolutions:
                    self.down[-1].append(AttnBlock(ch, g, c.num_heads))
                skips.append(ch)
            if level != len(c.ch_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
                res_now = (res_now + 1) // 2
        self.mid = nn.ModuleList([res(ch, ch), AttnBlock(ch, g, c.num_heads), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.ch_mult))):
            for _ in range(c.num_res_blocks + 1):
                blocks = nn.ModuleList([res(ch + skips.pop(), c.ch * mult)])
                ch = c.ch * mult
                if res_now in c.attn_resolutions:
                    blocks.append(AttnBlock(ch, g, c.num_heads))
                self.up.append(blocks)
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
                res_now *= 2
        self.out = nn.Sequential(_norm(ch, g), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))
        self.channels_last = False  # see use_channels_last

    def use_channels_last(self) -> UNet:
        """Keep the conv weights, and feed the inputs, in NHWC layout (in place; returns self).

        CPU convolutions run faster in NHWC; the outputs agree with NCHW to float32 rounding.
        """
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    @property
    def null_label(self) -> int:
        """The embedding row that means "no label" (classifier-free guidance's unconditional branch)."""
        return self.config.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``x`` ``(B, C_in, H, W)``, ``t`` ``(B,)``, labels ``y`` ``(B,)`` in [0, num_classes] → ``(B, C_out, H, W)``.

        ``y`` may instead be float weights ``(B, num_classes + 1)`` over the label embeddings: their mixture is
        the sample's class embedding (a 3 morphing into an 8 along an interpolation strip). An unconditional
        network refuses labels rather than ignore them; a conditional one reads ``y = None`` as "no label" for
        every sample.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        temb = self.time_mlp(timestep_embedding(t, self.config.ch))
        if self.class_emb is not None:
            if y is None:
                y = torch.full_like(t, self.null_label)
            temb = temb + (y.to(temb.dtype) @ self.class_emb.weight if y.is_floating_point() else self.class_emb(y))
        elif y is not None:
            raise ValueError("labels given to an unconditional network")
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            for layer in blocks:
                h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        for blocks in self.up:
            if isinstance(blocks[0], Upsample):
                h = blocks[0](h, hs[-1].shape[-2:])
                continue
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in blocks:
                h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        return self.out(h)


class SeedUNet(nn.Module):
    """The tutorial's SimpleUNet (docs/ERRATA.md): two levels, plain additive time embedding, for teaching.

    Kept faithful to the tutorial's shape (conv_in → down1 → pool → down2 → mid → up2 → ×2 → up1),
    with the channel counts taken from the config instead of hard-coded RGB.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        ch, temb = c.ch, c.ch * 4
        self.time_mlp = nn.Sequential(nn.Linear(temb, temb * 4), nn.SiLU(), nn.Linear(temb * 4, temb))
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)

        def block(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, temb, 0.0, 8, scale_shift=False)

        self.down1, self.down2 = block(ch, ch * 2), block(ch * 2, ch * 4)
        self.mid = block(ch * 4, ch * 4)
        self.up2, self.up1 = block(ch * 8, ch * 2), block(ch * 4, ch)
        self.conv_out = nn.Sequential(_norm(ch, 8), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.config.ch * 4))
        x1 = self.conv_in(x)
        x2 = self.down1(x1, temb)
        x3 = self.down2(F.avg_pool2d(x2, 2), temb)
        m = self.mid(x3, temb)
        u = self.up2(torch.cat([m, x3], dim=1), temb)
        u = F.interpolate(u, size=x2.shape[-2:], mode="nearest")
        u = self.up1(torch.cat([u, x2], dim=1), temb)
        return self.conv_out(u)


PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial's network: 64 channels, time embedding 256.
    "seed": dict(arch="seed", image_size=28, in_channels=1, out_channels=1, ch=64, ch_mult=(1, 2, 4),
                 num_res_blocks=1, attn_resolutions=(), dropout=0.0),
    # Small enough to train for minutes and sample interactively on a laptop CPU.
    "mnist": dict(arch="unet", image_size=28, in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2, 2),
                  num_res_blocks=2, attn_resolutions=(7,), dropout=0.0, norm_groups=8),
    # Ho et al. 2020, CIFAR-10: 35.7M parameters, additive time conditioning as in their code.
    "cifar10": dict(arch="unet", image_size=32, in_channels=3, out_channels=3, ch=128,
                    ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                    norm_groups=32, scale_shift=False),
    # Tiny, for tests.
    "tiny": dict(arch="unet", image_size=8, in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2),
                 num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, norm_groups=4),
}


def preset_config(name: str, **overrides: Any) -> UNetConfig:
    """A :class:`UNetConfig` from a named preset with keyword overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return UNetConfig(**{**PRESETS[name], **overrides})


def build_model(config: UNetConfig | dict[str, Any]) -> nn.Module:
    """Instantiate the network a config describes."""
    if isinstance(config, dict):
        config = UNetConfig.from_dict(config)
    if config.arch == "diffusers":
        raise ValueError("arch 'diffusers' describes a diffusers UNet2DModel; load its folder with load_model_file")
    return SeedUNet(config) if config.arch == "seed" else UNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())



def load_shared_weights(net: nn.Module, tensors: dict[str, Tensor]) -> list[str]:
    """Copy every tensor of ``tensors`` into ``net`` (same names and shapes) and return the names of
    ``net``'s tensors that were not in it, which keep their initial values.

    This turns an unconditional file into a class-conditional network: the class embedding is the only
    new tensor, and it starts at zero, so the network computes the old function until it is trained.
    A tensor with no place in ``net``, or of another shape, is an error rather than dropped.
    """
    own = net.state_dict()
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ValueError(f"{len(extra)} tensors have no place in this network (e.g. {extra[:2]})")
    bad = [k for k, v in tensors.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"tensor {bad[0]!r} has shape {tuple(tensors[bad[0]].shape)}, "
                         f"the network needs {tuple(own[bad[0]].shape)}")
    net.load_state_dict(tensors, strict=False)
    return sorted(set(own) - set(tensors))
