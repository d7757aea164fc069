"""A sampler reduced to numbers: :class:`SamplingPlan` holds, per step, the model's timestep and the
coefficients of the one update (see :mod:`engine.sampling.solvers`); :class:`StepCoeffs` holds those
rows for every sample of a batch, so one batch can mix samples at different steps of different plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.respace import select_timesteps
from .solvers import DEFAULT_ETA, SAMPLERS, SamplerName, ends_at_zero, step_table, takes_eta
from .spacing import DEFAULT_SPACING, SPACINGS, Spacing, max_steps, select


@dataclass(frozen=True)
class StepCoeffs:
    """Per-sample coefficients of one reverse step; every field has shape ``(B,)``.

    ``t`` is the model's (original-schedule) timestep, ``clip`` a bool mask for x̂0 clipping; the update is
    ``x_prev = coef_xt·x_t + coef_x0·x̂0 + coef_x0_prev·x̂0(i−1) + coef_x0_prev2·x̂0(i−2) + sigma·z``.
    """

    t: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    coef_xt: Tensor
    coef_x0: Tensor
    coef_x0_prev: Tensor
    coef_x0_prev2: Tensor
    sigma: Tensor
    clip: Tensor

    @staticmethod
    def cat(rows: list[StepCoeffs]) -> StepCoeffs:
        """Stack the rows of several jobs into one batch (one job's rows as they are)."""
        if len(rows) == 1:
            return rows[0]
        return StepCoeffs(**{f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in fields(StepCoeffs)})

    def __len__(self) -> int:
        return int(self.t.shape[0])


_ROW_FIELDS = ("sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "coef_xt", "coef_x0", "coef_x0_prev",
               "coef_x0_prev2", "sigma")


def steps_limit(diffusion: GaussianDiffusion, sampler: SamplerName, start_t: int | None = None) -> int:
    """The most steps ``sampler`` can take from ``start_t`` (default T − 1): the one source of that limit."""
    t_max = diffusion.T - 1 if start_t is None else int(start_t)
    return max_steps(t_max, ends_at_zero(sampler))


@dataclass(frozen=True)
class SamplingPlan:
    """The K reverse steps of one sampler, in execution order (t descending).

    Tensors are float64 ``(K,)`` on the CPU except ``timesteps`` (LongTensor ``(K,)``).
    Build with :meth:`build`; read per-sample rows with :meth:`coeffs`.
    """

    sampler: SamplerName
    spacing: Spacing
    eta: float | None  # None for samplers without η
    timesteps: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    coef_xt: Tensor
    coef_x0: Tensor
    coef_x0_prev: Tensor
    coef_x0_prev2: Tensor
    sigma: Tensor

    @property
    def K(self) -> int:
        return int(self.timesteps.numel())

    @property
    def order(self) -> int:
        """How many past data predictions the update reads (0 for DDPM/DDIM)."""
        return 2 if bool(self.coef_x0_prev2.ne(0).any()) else int(bool(self.coef_x0_prev.ne(0).any()))

    @classmethod
    def build(
        cls,
        diffusion: GaussianDiffusion,
        sampler: SamplerName = "ddpm",
        steps: int | str | Sequence[int] | None = None,
        eta: float | None = None,
        start_t: int | None = None,
        spacing: Spacing = DEFAULT_SPACING,
    ) -> SamplingPlan:
        """Plan ``steps`` reverse steps (default: every step) from ``start_t`` (default T−1) to the clean image.

        ``steps`` is a count laid out by ``spacing`` (:func:`engine.sampling.spacing.select`), or an
        explicit timestep list / ``"ddimK"`` spec (:func:`engine.select_timesteps`) for DDPM and DDIM.
        ``eta`` applies to ``ddim`` (default 0) and ``dpmpp_2m_sde`` (default 1, 0 being the ODE solver);
        giving it to another sampler is an error rather than ignored. ``start_t`` lets a run begin from
        a given x_t ("denoise from here").
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        if eta is not None and not takes_eta(sampler):
            raise ValueError(f"eta applies only to {tuple(DEFAULT_ETA)}, not to {sampler!r}")
        if eta is None:
            eta = DEFAULT_ETA.get(sampler)
        elif not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        T = diffusion.T
        t_max = T - 1 if start_t is None else int(start_t)
        if not 0 <= t_max < T:
            raise ValueError(f"start t must lie in [0, {T - 1}], got {t_max}")
        timesteps = cls._timesteps(diffusion, sampler, steps, spacing, t_max)
        table = step_table(diffusion.schedule, sampler, timesteps, eta or 0.0, diffusion.variance)
        ts = torch.tensor(timesteps, dtype=torch.long)
        ab = diffusion.schedule.alpha_bars[ts]
        return cls(sampler=sampler, spacing=spacing, eta=eta, timesteps=ts, sqrt_alpha_bar=ab.sqrt(),
                   sqrt_one_minus_alpha_bar=(1.0 - ab).sqrt(), coef_xt=table.a, coef_x0=table.b0,
                   coef_x0_prev=table.b1, coef_x0_prev2=table.b2, sigma=table.sigma)

    @staticmethod
    def _timesteps(diffusion: GaussianDiffusion, sampler: SamplerName, steps: int | str | Sequence[int] | None,
                   spacing: Spacing, t_max: int) -> list[int]:
        if steps is None:
            steps = steps_limit(diffusion, sampler, t_max)
        if isinstance(steps, int) or (isinstance(steps, str) and steps.strip().isdigit()):
            return select(diffusion.schedule, int(steps), spacing, t_max, ends_at_zero(sampler))
        if not ends_at_zero(sampler):
            raise ValueError(f"explicit timesteps are for ddpm and ddim; {sampler!r} takes a step count")
        if spacing != DEFAULT_SPACING:
            raise ValueError(f"spacing {spacing!r} applies to a step count, not to explicit timesteps {steps!r}")
        return select_timesteps(diffusion.T, steps, t_max)[::-1]

    def coeffs(self, step: int, n: int, device: torch.device | str, clip: bool = True,
               dtype: torch.dtype = torch.float32) -> StepCoeffs:
        """Rows for ``n`` samples that all take step ``step`` (0-based, in execution order), in ``dtype``."""
        if not 0 <= step < self.K:
            raise IndexError(f"step {step} outside [0, {self.K})")

        def row(v: Tensor, row_dtype: torch.dtype) -> Tensor:
            return v[step].to(row_dtype).expand(n).to(device)

        return StepCoeffs(t=row(self.timesteps, torch.long), clip=torch.full((n,), bool(clip), device=device),
                          **{name: row(getattr(self, name), dtype) for name in _ROW_FIELDS})
