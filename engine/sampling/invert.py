"""DDIM inversion: an image's x_T, found by running the deterministic DDIM update (η = 0) upwards in t on the step
grid its decode uses (Song et al. 2021, §4.3 and eq. (13): the update is an Euler step of an ODE, so it runs
both ways; Dhariwal & Nichol 2021, Appendix F). Decoding that x_T with DDIM on the same grid gives the image
back up to the discretisation error; decoding it under another label redraws the digit in the same "hand".

Inversion is unguided (s = 1, the plain conditional or unconditional prediction): guidance amplifies the
mismatch between the two directions and breaks the round trip (Mokady et al. 2023).

Going up from level s to the next level u, the noise prediction at the current point stands in for the one at
the next: x_u = √ᾱ_u·x̂0 + √(1 − ᾱ_u)·ε̂(x_s, s) with x̂0 = (x_s − √(1 − ᾱ_s)·ε̂)/√ᾱ_s, the decode's step read
backwards. The first move starts from the clean image (ᾱ = 1), with ε̂ asked at the plan's lowest level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.gaussian import split_prediction
from ..models.base import SamplingModel
from .guidance import Conditioning, Labels, as_denoiser
from .loop import last_frame, run_frames
from .plan import SamplingPlan
from .spec import SamplingSpec, Start, resolve


@torch.inference_mode()
def ddim_invert(model: SamplingModel, x0: Tensor, plan: SamplingPlan, cond: Conditioning | None = None,
                device: torch.device | str = "cpu") -> Tensor:
    """x_T ``(B, C, H, W)`` of images ``x0`` (in the model's value range) on ``plan``'s grid, which must be a
    deterministic DDIM plan; ``cond`` gives a class-conditional model its labels (its scale is ignored: s = 1)."""
    if plan.sampler != "ddim" or plan.eta:
        raise ValueError("inversion runs the deterministic DDIM update: build the plan with sampler 'ddim', eta 0")
    denoise = as_denoiser(model.net, cond is not None)
    if cond is not None:
        cond = Conditioning.of(cond.labels, 1.0, cond.null_label).to(device)
    ab = model.diffusion.schedule.alpha_bars
    levels = plan.timesteps.tolist()[::-1]  # ascending: 0 … t_max
    x = x0.to(device, torch.float32)
    for j, up in enumerate(levels):
        here = levels[j - 1] if j else levels[0]  # the clean image is asked at the lowest level
        out = denoise(x, torch.full((x.shape[0],), here, dtype=torch.long, device=device), cond)
        a, s = math.sqrt(float(ab[here])), math.sqrt(1.0 - float(ab[here]))
        x0_hat, eps = split_prediction(model.diffusion.prediction, out, x, a, s)
        if not j:
            x0_hat = x  # the clean image itself (ᾱ = 1)
        x = math.sqrt(float(ab[up])) * x0_hat + math.sqrt(1.0 - float(ab[up])) * eps
    return x


def round_trip_spec(model: SamplingModel, n: int, steps: int, label: Labels = None, guided: bool = False
                    ) -> SamplingSpec:
    """The decode that an inversion must match: deterministic DDIM on ``steps`` levels, unguided (s = 1), under
    ``label`` for a class-conditional model (None: its "no label" row). ``guided``: the model's default guidance
    instead, for an edit (a redrawn class), which need not retrace the inversion."""
    conditional = model.num_classes > 0
    unguided = conditional and not guided
    return SamplingSpec(n=n, sampler="ddim", steps=steps, eta=0.0, seed=0,
                        labels=("none" if label is None else label) if conditional else None,
                        guidance=1.0 if unguided else None,
                        guidance_interval=(0, model.diffusion.T - 1) if unguided else None)


@dataclass(frozen=True)
class Inversion:
    """x_T of each image ``(B, C, H, W)``, its DDIM decode on the same grid, and the round trip's PSNR ``(B,)``."""

    x_T: Tensor
    reconstruction: Tensor
    psnr: Tensor


def decode(model: SamplingModel, x_T: Tensor, steps: int, label: Labels = None,
           device: torch.device | str = "cpu", guided: bool = False) -> Tensor:
    """Deterministic DDIM from ``x_T`` ``(B, C, H, W)`` under ``label``; with another label than the inversion's
    and ``guided``, the image redrawn as that class in the same hand."""
    spec = round_trip_spec(model, x_T.shape[0], steps, label, guided)
    run = resolve(spec, model, start=Start(x_T, model.diffusion.T - 1))
    with torch.inference_mode():
        return last_frame(run_frames(run, model, device)).x_t


def invert(model: SamplingModel, x0: Tensor, steps: int, label: Labels = None,
           device: torch.device | str = "cpu") -> Inversion:
    """Invert images ``x0`` ``(B, C, H, W)`` (in the model's value range) on a ``steps``-level DDIM grid under
    ``label``, decode them back and score the round trip."""
    run = resolve(round_trip_spec(model, x0.shape[0], steps, label), model)
    x_T = ddim_invert(model, x0, run.plan, run.cond, device)  # type: ignore[arg-type]
    rec = decode(model, x_T, steps, label, device)
    return Inversion(x_T, rec, psnr(rec.cpu(), x0.cpu(), model.diffusion.clip_range))


def psnr(a: Tensor, b: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Peak signal-to-noise ratio per image ``(B,)`` in dB, pixels mapped to [0, 1]."""
    lo, hi = value_range
    mse = (((a - b) / (hi - lo)) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))
