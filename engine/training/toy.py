"""The 2D playground's training: :class:`~engine.models.mlp.PointDenoiser` on points, with the engine's diffusion
(the linear 1000-step schedule, so every sampler, score-SDE ones included, applies), its L_simple
(:func:`~engine.diffusion.losses.simple_loss`), its timestep sampling and its EMA, and sampling through the one
stepper. It trains for a time budget rather than a step count, since it runs while a visitor watches."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.losses import sample_timesteps, simple_loss
from ..diffusion.schedule import NoiseSchedule
from ..models.mlp import PointDenoiser
from ..sampling.guidance import as_denoiser
from ..sampling.plan import SamplingPlan
from ..sampling.solvers import SamplerName
from ..sampling.stepper import SampleFrame, Stepper
from .trainer import EMA

#: Points drawn per training step, and the optimiser's settings: chosen so that 8gaussians is recognisable
#: within seconds on two CPU cores (BENCHMARKS §11).
BATCH, LR, EMA_DECAY = 512, 3e-3, 0.995


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
        torch.manual_seed(seed)
        self.diffusion = GaussianDiffusion(NoiseSchedule.linear(1000))
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
    def sample_iter(self, n: int, sampler: SamplerName = "ddpm", steps: int = 100,
                    generator: torch.Generator | None = None) -> Iterator[SampleFrame]:
        """Points ``(n, 2)`` from the EMA model through the one stepper, a frame per step (unclipped: points are
        not pixels)."""
        plan = SamplingPlan.build(self.diffusion, sampler, steps)
        stepper = Stepper(as_denoiser(self.ema_model(), False), self.diffusion, "cpu")
        yield from stepper.iterate(stepper.start(plan, (n, 2), generator, clip=False))


def mode_coverage(points: Tensor, radius: float = 0.5) -> tuple[float, list[float]]:
    """For 8gaussians: the share of ``points`` within ``radius`` of a mode centre, and each mode's share."""
    from ..data.toy2d import EIGHT_CENTRES

    d = torch.cdist(points.float(), EIGHT_CENTRES)
    nearest, which = d.min(dim=1)
    near = nearest < radius
    shares = [float(((which == k) & near).float().mean()) for k in range(len(EIGHT_CENTRES))]
    return float(near.float().mean()), shares
