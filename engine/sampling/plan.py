"""A sampler reduced to numbers: :class:`SamplingPlan` holds, per model evaluation (a row), the model's timestep
and the coefficients of the one update (see :mod:`engine.sampling.solvers`); :class:`StepCoeffs` holds those
rows for every sample of a batch, so one batch can mix samples at different steps of different plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.respace import select_timesteps
from .score_sde import DEFAULT_CORRECTOR_STEPS, DEFAULT_SNR
from .solvers import ADAPTIVE, DEFAULT_ETA, SAMPLERS, SamplerName, ends_at_zero, step_table, takes_eta
from .spacing import DEFAULT_SPACING, SPACINGS, Spacing, max_steps, select
from .table import HistoryKind


@dataclass(frozen=True)
class StepCoeffs:
    """Per-sample coefficients of one reverse step; every field has shape ``(B,)``.

    ``t`` is the model's (original-schedule) timestep, ``clip`` a bool mask for x̂0 clipping; the update is
    ``x_prev = coef_xt·x_t + coef_x0·x̂0 + coef_eps·ε̂ + Σ_k coef_hist[:, k]·H_k + sigma·z``, plus a Langevin move
    on rows with ``langevin`` > 0 (:func:`~engine.sampling.step.sampling_step`). ``coef_hist`` is ``(B, S)``.
    ``uses_eps`` and ``uses_langevin`` say whether any row needs those terms (known on the host, so the step
    never asks the device).
    """

    t: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    coef_xt: Tensor
    coef_x0: Tensor
    coef_eps: Tensor
    coef_hist: Tensor
    sigma: Tensor
    langevin: Tensor
    clip: Tensor
    uses_eps: bool = False
    uses_langevin: bool = False

    @staticmethod
    def cat(rows: list[StepCoeffs]) -> StepCoeffs:
        """Stack the rows of several jobs into one batch (one job's rows as they are); history weights are
        padded with zeros to the most slots any job has."""
        if len(rows) == 1:
            return rows[0]
        S = max(r.coef_hist.shape[1] for r in rows)
        out = {f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in fields(StepCoeffs)
               if f.name not in ("coef_hist", "uses_eps", "uses_langevin")}
        hist = torch.cat([torch.nn.functional.pad(r.coef_hist, (0, S - r.coef_hist.shape[1])) for r in rows])
        return StepCoeffs(**out, coef_hist=hist, uses_eps=any(r.uses_eps for r in rows),
                          uses_langevin=any(r.uses_langevin for r in rows))

    def __len__(self) -> int:
        return int(self.t.shape[0])


_ROW_FIELDS = ("sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "coef_xt", "coef_x0", "coef_eps", "sigma", "langevin")


def steps_limit(diffusion: GaussianDiffusion, sampler: SamplerName, start_t: int | None = None) -> int:
    """The most steps ``sampler`` can take from ``start_t`` (default T − 1): the one source of that limit."""
    t_max = diffusion.T - 1 if start_t is None else int(start_t)
    return max_steps(t_max, ends_at_zero(sampler))


@dataclass(frozen=True)
class SamplingPlan:
    """The K rows (model evaluations) of one sampler, in execution order (t descending; a timestep may repeat).

    Tensors are float64 ``(K,)`` on the CPU except ``timesteps`` (LongTensor ``(K,)``) and ``coef_hist``
    ``(K, S)``; ``writes`` and ``history`` say which prediction each row stores in which history slot
    (:class:`~engine.sampling.table.StepTable`). Build with :meth:`build`; read per-sample rows with :meth:`coeffs`.
    """

    sampler: SamplerName
    spacing: Spacing
    eta: float | None  # None for samplers without η
    timesteps: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    coef_xt: Tensor
    coef_x0: Tensor
    coef_eps: Tensor
    coef_hist: Tensor
    sigma: Tensor
    langevin: Tensor
    writes: tuple[int, ...]
    history: HistoryKind | None

    @property
    def K(self) -> int:
        return int(self.timesteps.numel())

    @property
    def slots(self) -> int:
        """How many history slots a run of this plan keeps (0 when no row reads or writes one)."""
        return int(self.coef_hist.shape[1]) if self.history is not None else 0

    @classmethod
    def build(
        cls,
        diffusion: GaussianDiffusion,
        sampler: SamplerName = "ddpm",
        steps: int | str | Sequence[int] | None = None,
        eta: float | None = None,
        start_t: int | None = None,
        spacing: Spacing = DEFAULT_SPACING,
        snr: float | None = None,
        corrector_steps: int | None = None,
    ) -> SamplingPlan:
        """Plan ``steps`` reverse steps (default: every step) from ``start_t`` (default T−1) to the clean image.

        ``steps`` is a count laid out by ``spacing`` (:func:`engine.sampling.spacing.select`), or an
        explicit timestep list / ``"ddimK"`` spec (:func:`engine.select_timesteps`) for DDPM and DDIM.
        ``eta`` applies to ``ddim`` (default 0) and ``dpmpp_2m_sde`` (default 1, 0 being the ODE solver);
        giving it to another sampler is an error rather than ignored. ``start_t`` lets a run begin from
        a given x_t ("denoise from here"). ``snr`` and ``corrector_steps`` are ``pc``'s Langevin corrector's.
        """
        if sampler not in SAMPLERS or sampler == ADAPTIVE:
            raise ValueError(f"sampler must be one of {tuple(s for s in SAMPLERS if s != ADAPTIVE)}, got {sampler!r}")
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
        table = step_table(diffusion.schedule, sampler, timesteps, eta or 0.0, diffusion.variance,
                           DEFAULT_SNR if snr is None else snr,
                           DEFAULT_CORRECTOR_STEPS if corrector_steps is None else corrector_steps)
        ts = torch.tensor(table.t, dtype=torch.long)
        ab = diffusion.schedule.alpha_bars[ts]
        return cls(sampler=sampler, spacing=spacing, eta=eta, timesteps=ts, sqrt_alpha_bar=ab.sqrt(),
                   sqrt_one_minus_alpha_bar=(1.0 - ab).sqrt(), coef_xt=table.a, coef_x0=table.b0, coef_eps=table.e0,
                   coef_hist=table.hist, sigma=table.sigma, langevin=table.langevin, writes=table.writes,
                   history=table.history)

    @staticmethod
    def _timesteps(diffusion: GaussianDiffusion, sampler: SamplerName, steps: int | str | Sequence[int] | None,
                   spacing: Spacing, t_max: int) -> list[int]:
        if steps is None:
            steps = steps_limit(diffusion, sampler, t_max)
        if isinstance(steps, int) or (isinstance(steps, str) and steps.strip().isdigit()):
            return select(diffusion.schedule, int(steps), spacing, t_max, ends_at_zero(sampler))
        if sampler not in ("ddpm", "ddim"):
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
                          coef_hist=self.coef_hist[step].to(dtype).expand(n, -1).to(device),
                          uses_eps=bool(self.coef_eps[step] != 0), uses_langevin=bool(self.langevin[step] != 0),
                          **{name: row(getattr(self, name), dtype) for name in _ROW_FIELDS})
