"""Noise schedules β_1..β_T and every constant derived from them.

Indices are 0-based: index ``i`` holds β for step i+1 of Ho et al. 2020.
All constants are computed in float64 (in fp16/fp32, 1 − ᾱ loses its digits where ᾱ ≈ 1)
and cast to the caller's device/dtype on demand through :meth:`NoiseSchedule.to`.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
from torch import Tensor

_CONSTANTS = (
    "betas",
    "alphas",
    "alpha_bars",
    "alpha_bars_prev",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef_x0",
    "posterior_mean_coef_xt",
    "snr",
)


class NoiseSchedule:
    """A discrete variance schedule with its derived constants, all float64 of length T.

    Attributes (each a float64 tensor of shape ``(T,)``):
        betas: β_t.
        alphas: α_t = 1 − β_t.
        alpha_bars: ᾱ_t = ∏_{s≤t} α_s.
        alpha_bars_prev: ᾱ_{t−1}, with ᾱ_{−1} = 1 (index t − 1 must not wrap to the last entry
            at t = 0; docs/ERRATA.md, E2).
        sqrt_alpha_bars, sqrt_one_minus_alpha_bars: √ᾱ_t and √(1−ᾱ_t).
        posterior_variance: β̃_t = β_t (1−ᾱ_{t−1}) / (1−ᾱ_t); exactly 0 at t = 0.
        posterior_log_variance_clipped: log β̃_t with the t = 0 entry replaced by log β̃_1,
            because log 0 = −inf there.
        posterior_mean_coef_x0, posterior_mean_coef_xt: μ̃ = c_x0·x0 + c_xt·x_t.
        snr: ᾱ_t / (1−ᾱ_t).
    """

    def __init__(self, betas: Tensor | list[float]) -> None:
        b = torch.as_tensor(betas, dtype=torch.float64).detach().clone().cpu()
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(b.shape)}")
        if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
            raise ValueError("betas must all lie in the open interval (0, 1)")
        self.betas = b
        self.alphas = 1.0 - b
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([b.new_ones(1), self.alpha_bars[:-1]])
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        # 1 − ᾱ via expm1/log1p keeps precision when ᾱ is within 1e-16 of 1.
        one_minus_ab = -torch.expm1(torch.cumsum(torch.log1p(-b), dim=0))
        self.sqrt_one_minus_alpha_bars = one_minus_ab.sqrt()
        one_minus_ab_prev = torch.cat([b.new_zeros(1), one_minus_ab[:-1]])
        self.posterior_variance = b * one_minus_ab_prev / one_minus_ab
        first = self.posterior_variance[1] if len(b) > 1 else b[0]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first.reshape(1), self.posterior_variance[1:]])
        )
        self.posterior_mean_coef_x0 = b * self.alpha_bars_prev.sqrt() / one_minus_ab
        self.posterior_mean_coef_xt = one_minus_ab_prev * self.alphas.sqrt() / one_minus_ab
        self.snr = self.alpha_bars / one_minus_ab
        self._one_minus_alpha_bars = one_minus_ab
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    # ----------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """Ho et al. 2020's linear schedule (1e-4 → 2e-2 for T = 1000)."""
        _check_T(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal's cosine schedule: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2).

        β_t = min(1 − ᾱ(t+1)/ᾱ(t), max_beta); the cap keeps the last step from being exactly 1.
        """
        _check_T(T)
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(min=1e-12, max=max_beta)
        return cls(betas)

    @classmethod
    def from_name(cls, name: str, T: int, **kwargs: float) -> NoiseSchedule:
        """Build ``"linear"`` or ``"cosine"`` by name (used by model files and the CLI)."""
        if name == "linear":
            return cls.linear(T, **kwargs)
        if name == "cosine":
            return cls.cosine(T, **kwargs)
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {name!r}")

    # ----------------------------------------------------------------- accessors
    @property
    def T(self) -> int:
        return int(self.betas.numel())

    @property
    def one_minus_alpha_bars(self) -> Tensor:
        return self._one_minus_alpha_bars

    @cached_property
    def log_snr(self) -> Tensor:
        """log SNR_t = log(ᾱ_t / (1−ᾱ_t)), float64 ``(T,)``, decreasing in t.

        Half of it is λ_t = log(α_t/σ_t) of Lu et al. 2022 (DPM-Solver), with α_t = √ᾱ_t, σ_t = √(1−ᾱ_t).
        """
        return torch.log(self.alpha_bars) - torch.log(self._one_minus_alpha_bars)

    def to(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """All derived constants cast to ``device``/``dtype``, cached per pair."""
        key = (torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = {
                name: getattr(self, name).to(device=key[0], dtype=dtype) for name in _CONSTANTS
            }
        return self._cache[key]

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.T}, beta[0]={self.betas[0].item():.3g}, "
            f"beta[-1]={self.betas[-1].item():.3g}, alpha_bar[-1]={self.alpha_bars[-1].item():.3g})"
        )


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")


def extract(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Gather ``values[t]`` per sample, shaped ``(B, 1, …, 1)`` to broadcast against ``like``.

    The result is on ``like``'s device in float64 when ``like`` is float64, else float32.
    Every per-t coefficient must be shaped like this, or sampling a batch fails (docs/ERRATA.md, E2).
    """
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    out = values.to(device=like.device, dtype=dtype)[t.to(like.device)]
    return out.reshape(out.shape[0], *([1] * (like.ndim - 1)))
