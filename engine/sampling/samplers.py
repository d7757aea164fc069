"""Samplers: DDPM ancestral (all T steps or respaced to K) and DDIM(η), with one step function.

Every sampler is reduced to a :class:`SamplingPlan`: per step, the model's timestep and four
numbers, so one reverse step is always

    x̂0, ε̂ = split(model(x_t, t))            (clipped x̂0 if asked)
    x_prev = c_x0·x̂0 + c_xt·x_t + σ·z

DDPM uses the posterior coefficients of its (respaced) schedule and σ² = β̃ or β; DDIM uses
c_xt = √(1−ᾱ_prev−σ²)/√(1−ᾱ), c_x0 = √ᾱ_prev − c_xt·√ᾱ with σ² = η²·β̃. Because the step only
reads per-sample rows (:class:`StepCoeffs`), a batch can mix samples at different steps of
different plans; the server's worker relies on this. The seed's ``Diffusion.step`` fails on
batches and wraps ``alpha_bar[t-1]`` at t = 0 (DESIGN errata §7); here ᾱ_prev at the last step
is 1 by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion, Prediction, split_prediction
from ..diffusion.respace import respace

SamplerName = Literal["ddpm", "ddim"]
SAMPLERS: tuple[SamplerName, ...] = ("ddpm", "ddim")
Model = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StepCoeffs:
    """Per-sample coefficients of one reverse step; every field has shape ``(B,)``.

    ``t`` is the model's (original-schedule) timestep, ``clip`` a bool mask for x̂0 clipping.
    """

    t: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    coef_x0: Tensor
    coef_xt: Tensor
    sigma: Tensor
    clip: Tensor

    @staticmethod
    def cat(rows: list[StepCoeffs]) -> StepCoeffs:
        """Stack the rows of several jobs into one batch."""
        return StepCoeffs(**{f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in fields(StepCoeffs)})

    def __len__(self) -> int:
        return int(self.t.shape[0])


@dataclass(frozen=True)
class SamplingPlan:
    """The K reverse steps of one sampler, in execution order (t descending).

    Tensors are float64 ``(K,)`` on the CPU except ``timesteps`` (LongTensor ``(K,)``).
    Build with :meth:`build`; read per-sample rows with :meth:`coeffs`.
    """

    sampler: SamplerName
    eta: float
    timesteps: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    coef_x0: Tensor
    coef_xt: Tensor
    sigma: Tensor

    @property
    def K(self) -> int:
        return int(self.timesteps.numel())

    @classmethod
    def build(
        cls,
        diffusion: GaussianDiffusion,
        sampler: SamplerName = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        start_t: int | None = None,
    ) -> SamplingPlan:
        """Plan ``steps`` reverse steps (default: every step) from ``start_t`` (default T−1) to 0.

        ``sampler="ddpm"`` with fewer than all steps is DDPM on the respaced schedule;
        ``sampler="ddim"`` uses ``eta`` (0 = deterministic DDIM, 1 = DDPM-like noise).
        ``start_t`` lets a run begin from a given x_t ("denoise from here").
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        T = diffusion.T
        t_max = T - 1 if start_t is None else int(start_t)
        if steps is None:
            steps = t_max + 1
        r = respace(diffusion.schedule, steps, t_max=t_max)
        s = r.schedule
        ab, ab_prev = s.alpha_bars, s.alpha_bars_prev
        one_minus_ab = s.one_minus_alpha_bars
        if sampler == "ddpm":
            coef_x0, coef_xt = s.posterior_mean_coef_x0, s.posterior_mean_coef_xt
            src = s.posterior_variance if diffusion.variance == "fixed_small" else s.betas
            var = src.clone()
        else:
            var = (eta**2) * s.posterior_variance
            coef_xt = (1.0 - ab_prev - var).clamp(min=0.0).sqrt() / one_minus_ab.sqrt()
            coef_x0 = ab_prev.sqrt() - coef_xt * ab.sqrt()
        var[0] = 0.0  # the last step returns the mean: no noise is added to the final image
        order = torch.arange(r.K - 1, -1, -1)
        return cls(
            sampler=sampler,
            eta=float(eta) if sampler == "ddim" else 1.0,
            timesteps=r.timesteps[order],
            sqrt_alpha_bar=ab.sqrt()[order],
            sqrt_one_minus_alpha_bar=one_minus_ab.sqrt()[order],
            coef_x0=coef_x0[order],
            coef_xt=coef_xt[order],
            sigma=var.sqrt()[order],
        )

    def coeffs(
        self, step: int, n: int, device: torch.device | str, clip: bool = True
    ) -> StepCoeffs:
        """Rows for ``n`` samples that all take step ``step`` (0-based, in execution order)."""
        if not 0 <= step < self.K:
            raise IndexError(f"step {step} outside [0, {self.K})")

        def row(v: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
            return v[step].to(dtype).expand(n).to(device)

        return StepCoeffs(
            t=row(self.timesteps, torch.long),
            sqrt_alpha_bar=row(self.sqrt_alpha_bar),
            sqrt_one_minus_alpha_bar=row(self.sqrt_one_minus_alpha_bar),
            coef_x0=row(self.coef_x0),
            coef_xt=row(self.coef_xt),
            sigma=row(self.sigma),
            clip=torch.full((n,), bool(clip), device=device),
        )


def sampling_step(
    prediction: Prediction,
    model_output: Tensor,
    x_t: Tensor,
    c: StepCoeffs,
    noise: Tensor,
    clip_range: tuple[float, float] = (-1.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """One reverse step for a batch whose samples may sit at different steps of different plans.

    Args:
        prediction: the model's output type.
        model_output, x_t, noise: ``(B, C, H, W)``.
        c: per-sample coefficients, each ``(B,)``.
    Returns:
        ``(x_prev, x0_hat)``, both ``(B, C, H, W)`` in float32 (or x_t's dtype if float64).
    """
    dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
    shape = (-1,) + (1,) * (x_t.ndim - 1)

    def b(v: Tensor) -> Tensor:
        return v.to(dtype).reshape(shape)

    x_t = x_t.to(dtype)
    x0, _ = split_prediction(
        prediction,
        model_output.to(dtype),
        x_t,
        b(c.sqrt_alpha_bar),
        b(c.sqrt_one_minus_alpha_bar),
        c.clip,
        clip_range,
    )
    x_prev = b(c.coef_x0) * x0 + b(c.coef_xt) * x_t + b(c.sigma) * noise.to(dtype)
    return x_prev, x0


@dataclass(frozen=True)
class SampleFrame:
    """State after reverse step ``step`` (1-based) of ``of``: ``x_t`` is the new state and ``x0``
    the prediction made at model timestep ``t``. Both ``(N, C, H, W)``; at ``step == of``
    ``x_t`` is the final sample."""

    step: int
    of: int
    t: int
    x_t: Tensor
    x0: Tensor


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """N(0, I) of ``shape`` from ``generator`` (on its own device), moved to ``device``.

    All samplers, offline and server, draw x_T and then one noise tensor per step through this,
    so a seed gives the same images however jobs are batched.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gdev).to(device)


@torch.inference_mode()
def sample_iter(
    model: Model,
    diffusion: GaussianDiffusion,
    plan: SamplingPlan,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_start: Tensor | None = None,
    clip: bool = True,
) -> Iterator[SampleFrame]:
    """Run ``plan`` and yield a :class:`SampleFrame` after every step.

    ``shape`` is ``(N, C, H, W)``. ``x_start`` (same shape) replaces the x_T draw, for runs that
    begin from a noised image; the plan must then start at that image's t.
    """
    x = draw_noise(shape, generator, device) if x_start is None else x_start.to(device).float()
    n = shape[0]
    for step in range(plan.K):
        c = plan.coeffs(step, n, device, clip)
        out = model(x, c.t)
        x, x0 = sampling_step(diffusion.prediction, out, x, c, draw_noise(shape, generator, device),
                              diffusion.clip_range)
        yield SampleFrame(step + 1, plan.K, int(plan.timesteps[step]), x, x0)


def sample(
    model: Model,
    diffusion: GaussianDiffusion,
    plan: SamplingPlan,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_start: Tensor | None = None,
    clip: bool = True,
    progress: bool = False,
) -> Tensor:
    """Run ``plan`` to the end and return the final samples ``(N, C, H, W)``."""
    frames = sample_iter(model, diffusion, plan, shape, generator, device, x_start, clip)
    if progress:
        from tqdm.auto import tqdm

        frames = tqdm(frames, total=plan.K, desc=f"{plan.sampler} {plan.K} steps", unit="step")
    last = None
    for last in frames:  # noqa: B007 - only the final frame is kept
        pass
    assert last is not None
    return last.x_t

