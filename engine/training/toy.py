"""The 2D playground's training: :class:`~engine.models.mlp.PointDenoiser` on points, with the engine's diffusion
(the linear 1000-step schedule, so every sampler, score-SDE ones included, applies), its L_simple
(:func:`~engine.diffusion.losses.simple_loss`), its timestep sampling and its EMA, and sampling through the one
stepper. It trains for a time budget rather than a step count, since it runs while a visitor watches."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.toy2d import EIGHT_CENTRES
from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.losses import sample_timesteps, simple_loss
from ..diffusion.schedule import NoiseSchedule
from ..models.mlp import PointDenoiser
from ..sampling.errors import SpecError
from ..sampling.guidance import as_denoiser
from ..sampling.loop import last_frame
from ..sampling.ode import DEFAULT_ATOL, DEFAULT_RTOL, OdePlan
from ..sampling.plan import SamplingPlan, steps_limit
from ..sampling.solvers import ADAPTIVE, SAMPLERS, SamplerName
from ..sampling.spec import MIN_STEPS
from ..sampling.stepper import AnyLane, SampleFrame, Stepper
from .trainer import EMA

#: Points drawn per training step, and the optimiser's settings: chosen so that 8gaussians is recognisable
#: within seconds on two CPU cores (BENCHMARKS §11).
BATCH, LR, EMA_DECAY = 512, 3e-3, 0.995
#: A toy model's samplers: every one the images have (ode_rk45 at its default tolerances).
TOY_SAMPLERS: tuple[SamplerName, ...] = SAMPLERS
#: The steps of a fixed-step sampler that is given none.
DEFAULT_TOY_STEPS = 100
#: The timesteps at which :meth:`ToyTrainer.field` is drawn, for the playground's t slider.
FIELD_TIMESTEPS = (0, 25, 50, 100, 200, 300, 400, 500, 650, 800, 999)


@functools.cache
def toy_diffusion() -> GaussianDiffusion:
    """Every toy model's diffusion: the linear 1000-step schedule, predicting ε."""
    return GaussianDiffusion(NoiseSchedule.linear(1000))


def toy_plan(sampler: str, steps: int | None = None) -> SamplingPlan | OdePlan:
    """The plan of ``steps`` levels of ``sampler`` (default :data:`DEFAULT_TOY_STEPS`; ode_rk45 takes none and
    picks its own) for a toy model; :class:`SpecError` naming the field it refuses."""
    diffusion = toy_diffusion()
    if sampler not in TOY_SAMPLERS:
        raise SpecError("sampler", f"sampler must be one of {', '.join(TOY_SAMPLERS)}", sampler)
    if sampler == ADAPTIVE:
        if steps is not None:
            raise SpecError("steps", f"steps: {ADAPTIVE} chooses its own steps; leave steps out", steps)
        return OdePlan.build(diffusion, DEFAULT_RTOL, DEFAULT_ATOL)
    steps = DEFAULT_TOY_STEPS if steps is None else steps
    lo, hi = MIN_STEPS.get(sampler, 1), steps_limit(diffusion, sampler)  # type: ignore[arg-type]
    if not lo <= steps <= hi:
        raise SpecError("steps", f"steps must lie in [{lo}, {hi}] for {sampler}", steps)
    return SamplingPlan.build(diffusion, sampler, steps)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Flows:
    """Particles from the same x_T to the data: ``sde`` along the reverse SDE (ancestral DDPM), ``ode`` along the
    probability-flow ODE (DDIM, η = 0); each ``(steps + 1, m, 2)``, x_T first."""

    sde: Tensor
    ode: Tensor


@dataclass(frozen=True)
class ToyStep:
    """Progress after training step ``step``: its loss, and the seconds spent training so far."""

    step: int
    loss: float
    seconds: float


class ToyTrainer:
    """Trains a point denoiser on ``data(n, generator) -> (n, 2)`` draws."""

    def __init__(self, data: Callable[[int, torch.Generator], Tensor], seed: int = 0) -> None:
        self.data = data
        self.generator = torch.Generator().manual_seed(seed)
        self.diffusion = toy_diffusion()
        with torch.random.fork_rng(devices=[]):  # a server trains these beside others: leave the global RNG be
            torch.manual_seed(seed)
            self.model = PointDenoiser()
        self.ema = EMA(self.model, EMA_DECAY)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.step, self.seconds = 0, 0.0

    def train_step(self) -> float:
        x0 = self.data(BATCH, self.generator)
        t = sample_timesteps(self.diffusion, BATCH, generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator)
        loss = simple_loss(self.diffusion, self.model, x0, t, noise).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return float(loss.detach())

    def train_steps(self, steps: int) -> float:
        """Train ``steps`` steps; their mean loss."""
        return sum(self.train_step() for _ in range(steps)) / steps

    def train_for(self, seconds: float, every: float = 0.5) -> Iterator[ToyStep]:
        """Train for ``seconds`` (wall time), yielding progress about every ``every`` seconds and at the end."""
        start, last = time.perf_counter(), float("-inf")
        losses: list[float] = []
        while (now := time.perf_counter()) - start < seconds:
            losses.append(self.train_step())
            if now - last >= every:
                last = now
                yield ToyStep(self.step, sum(losses) / len(losses), self.seconds + now - start)
                losses = []
        self.seconds += time.perf_counter() - start
        yield ToyStep(self.step, sum(losses) / len(losses) if losses else float("nan"), self.seconds)

    def ema_model(self) -> PointDenoiser:
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.ema.state_dict())
        return m.eval()

    @torch.inference_mode()
    def sample_iter(self, n: int, sampler: SamplerName = "ddpm", steps: int | None = None,
                    generator: torch.Generator | None = None) -> Iterator[SampleFrame]:
        """Points ``(n, 2)`` from the EMA model through the one stepper, a frame per step (unclipped: points are
        not pixels). :class:`SpecError` for a sampler or a step count a toy model cannot take."""
        stepper, lane = self._start(n, sampler, steps, generator)
        yield from stepper.iterate(lane)

    def _start(self, n: int, sampler: str, steps: int | None,
               generator: torch.Generator | None) -> tuple[Stepper, AnyLane]:
        stepper = Stepper(as_denoiser(self.ema_model(), False), self.diffusion, "cpu")
        return stepper, stepper.start(toy_plan(sampler, steps), (n, 2), generator, clip=False)

    def sample(self, n: int, sampler: SamplerName, steps: int | None, seed: int) -> Tensor:
        """The last frame of :meth:`sample_iter`: ``n`` points ``(n, 2)``."""
        return last_frame(self.sample_iter(n, sampler, steps, torch.Generator().manual_seed(seed))).x_t

    @torch.inference_mode()
    def trail_iter(self, m: int, sampler: SamplerName, steps: int, seed: int) -> Iterator[Tensor]:
        """``m`` particles ``(m, 2)`` from x_T (drawn from a generator seeded ``seed``, whatever the sampler) to the
        data: x_T, then after each of ``steps`` levels."""
        stepper, lane = self._start(m, sampler, steps, torch.Generator().manual_seed(seed))
        yield lane.x.clone()
        for frame in stepper.iterate(lane):
            yield frame.x_t

    def flows(self, m: int, steps: int, seed: int) -> Flows:
        """``m`` particles along the SDE and the ODE, each ``steps`` levels, from the same x_T."""
        return Flows(*(torch.stack(list(self.trail_iter(m, s, steps, seed))) for s in ("ddpm", "ddim")))

    @torch.inference_mode()
    def field(self, extent: float, k: int, timesteps: Sequence[int] = FIELD_TIMESTEPS) -> Tensor:
        """The EMA model's ε̂ on a ``k × k`` grid over ``[−extent, extent]²`` at each of ``timesteps``:
        ``(len(timesteps), k, k, 2)``, row ``i`` at y = −extent + 2·extent·i/(k − 1), column ``j`` likewise in x.
        The score is −ε̂/√(1 − ᾱ_t) (eq. 11 of Song et al. 2021)."""
        axis = torch.linspace(-extent, extent, k)
        ys, xs = torch.meshgrid(axis, axis, indexing="ij")
        grid = torch.stack([xs, ys], -1).reshape(-1, 2)
        model = self.ema_model()
        out = [model(grid, torch.full((k * k,), t, dtype=torch.long)) for t in timesteps]
        return torch.stack(out).reshape(len(timesteps), k, k, 2)


def mode_coverage(points: Tensor, radius: float = 0.5) -> tuple[float, list[float]]:
    """For 8gaussians: the share of ``points`` within ``radius`` of a mode centre, and each mode's share."""
    d = torch.cdist(points.float(), EIGHT_CENTRES)
    nearest, which = d.min(dim=1)
    near = nearest < radius
    shares = [float(((which == k) & near).float().mean()) for k in range(len(EIGHT_CENTRES))]
    return float(near.float().mean()), shares
