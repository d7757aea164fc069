"""``ode_rk45``: the probability-flow ODE dx/dt = −½β(t)·(x − ε̂/σ(t)) (Song et al. 2021, eq. (13)) from the
start time down to t_min = 1/N, by adaptive Dormand–Prince (:mod:`engine.diffusion.rk45`). Each run keeps its own
step size and stages (an :class:`OdeLane`), so the stepper can put one stage of it into the same network call as
rows of fixed-step runs. The final image is x̂0 at t_min, from the last stage's evaluation, which Dormand–Prince
makes at the end point anyway (first same as last): score_sde's ``denoise`` step without its extra call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion, split_prediction
from ..diffusion.rk45 import DormandPrince
from ..diffusion.sde import VPSDE
from .errors import SpecError
from .guidance import Conditioning
from .solvers import ADAPTIVE, SamplerName

#: Tolerances for 28×28 digits in [−1, 1], where one 8-bit level is 2/255 ≈ 7.8e-3: at 1e-3 a solve takes 80–110
#: evaluations and its pixels sit about one level (mean) from a 1e-5 solve's; tighter tolerances cost more
#: evaluations without moving that mean (BENCHMARKS §9b). score_sde's 1e-5 is for likelihoods.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-3
#: The most evaluations a run may take; a run that needs more fails instead of running on.
MAX_EVALUATIONS = 2000


@dataclass(frozen=True)
class OdePlan:
    """An adaptive run from model time ``t_start`` to ``sde.t_min``; ``K`` is its evaluation budget."""

    sde: VPSDE
    t_start: float
    rtol: float
    atol: float
    sampler: SamplerName = ADAPTIVE
    spacing: None = None
    eta: None = None
    K: int = MAX_EVALUATIONS

    @classmethod
    def build(cls, diffusion: GaussianDiffusion, rtol: float, atol: float, start_t: int | None = None) -> OdePlan:
        """From the top (t = 1) or from discrete timestep ``start_t``'s time (its image's noise level)."""
        sde = VPSDE.of(diffusion.schedule)
        t_start = sde.t_max if start_t is None else float(sde.time_of(start_t))
        return cls(sde, min(t_start, sde.t_max), rtol, atol)


class OdeLane:
    """One ``ode_rk45`` run's state in a stepper's batch: x, its Dormand–Prince machine and its conditioning.

    ``step`` counts evaluations; a frame after each evaluation shows the last accepted state and the latest x̂0,
    with ``of`` the evaluations expected from how far t has come (exact at the end).
    """

    def __init__(self, plan: OdePlan, x: Tensor, generator: torch.Generator | None, clip: bool,
                 cond: Conditioning | None) -> None:
        # the generator drew x_T; the solve itself draws nothing
        self.plan, self.generator, self.clip, self.cond = plan, generator, clip, cond
        self.n = int(x.shape[0])
        self.solver = DormandPrince(x, plan.t_start, plan.sde.t_min, plan.rtol, plan.atol)
        self.step = 0
        self.x = x
        self.x0 = torch.zeros_like(x)

    @property
    def done(self) -> bool:
        return self.solver.done

    def draw_noise(self) -> None:
        """A deterministic solve draws no per-step noise (the stepper's contract for fixed-step lanes)."""
        return None

    @property
    def progress(self) -> float:
        """The share of the way from t_start to t_min covered."""
        span = self.plan.t_start - self.plan.sde.t_min
        return 1.0 if span <= 0 else min(1.0, (self.plan.t_start - self.solver.t) / span)

    def point(self) -> tuple[Tensor, Tensor]:
        """The x ``(n, C, H, W)`` and network timesteps ``(n,)`` (fractional) the next stage needs."""
        if self.step >= self.plan.K:
            p = self.plan
            raise SpecError("rtol", f"rtol: {ADAPTIVE} needed more than {p.K} evaluations at rtol = {p.rtol:g}, "
                                    f"atol = {p.atol:g}; raise rtol or atol", p.rtol)
        t, y = self.solver.point()
        return y, self.plan.sde.model_timestep(torch.full((self.n,), t, dtype=torch.float64)).to(y.device)

    def stage(self, diffusion: GaussianDiffusion, x: Tensor, model_output: Tensor) -> tuple[Tensor, Tensor]:
        """The drift and x̂0 at ``x`` (the last :meth:`point`) from the network's output; raises, changing nothing,
        when the drift is not finite."""
        t = torch.tensor(self.solver.point()[0], dtype=torch.float64)
        sde = self.plan.sde
        alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
        x0, eps = split_prediction(diffusion.prediction, model_output.to(x.dtype), x, alpha, sigma)
        drift = sde.ode_drift(x, eps, t)
        if not bool(torch.isfinite(drift).all()):
            raise RuntimeError(f"{ADAPTIVE}: the network's output is not finite at t = {float(t):.4g}")
        lo, hi = diffusion.clip_range
        return drift, x0.clamp(lo, hi) if self.clip else x0

    def feed(self, drift: Tensor, x0: Tensor) -> None:
        """Advance the machine by a :meth:`stage`."""
        self.solver.feed(drift)
        self.x0 = x0
        self.step += 1
        self.x = self.x0 if self.done else self.solver.y

    def expected_evaluations(self) -> int:
        if self.done:
            return self.step
        return max(self.step + 1, min(self.plan.K, round(self.step / max(self.progress, 1e-3))))

    def model_timestep(self) -> int:
        """The network timestep of the last accepted state, for frames."""
        return max(0, round(float(self.plan.sde.model_timestep(torch.tensor(self.solver.t)))))
