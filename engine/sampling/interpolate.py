"""Interpolation through noise space: a strip of k images whose x_T run along the great circle between two seeds'
x_T (spherical interpolation: Gaussian noise lives near a sphere, and a straight line between two draws passes
through improbably small norms; Song et al. 2021, DDIM §5.3), decoded by a deterministic sampler so that the
strip is a function of x_T alone. On a class-conditional model the class embedding blends from one label to the
other along the strip (:class:`~engine.sampling.guidance.Conditioning`'s ``mix``), so a 3 morphs into an 8, seed
and class changing at once or one at a time.

The strip's ends are the two seeds' own images: the x_T of seed s is the one a one-image job with seed s and a
given label draws (``torch.randn((1, C, H, W), generator=Generator().manual_seed(s))``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..models.base import SamplingModel
from .errors import SpecError
from .spec import SamplingRun, SamplingSpec, ServerDefaults, Start, resolve
from .step import draw_noise

#: Samplers whose images are a function of x_T alone (with η = 0 where they take one). ode_rk45 is deterministic
#: too, but one adaptive step size serves its whole batch, so a strip's images would depend on each other.
DETERMINISTIC = ("ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "plms", "pndm")
#: The sampler a strip gets when the request names none.
DEFAULT_INTERPOLATION_SAMPLER = "ddim"


def slerp(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """Spherical interpolation of ``a`` and ``b`` ``(1, …)`` at weights ``w`` ``(k,)`` → ``(k, …)`` (linear
    where the two are parallel)."""
    fa, fb = a.flatten().double(), b.flatten().double()
    cos = torch.dot(fa, fb) / (fa.norm() * fb.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    w = w.double().reshape(-1, 1)
    if float(theta) < 1e-6:
        out = (1 - w) * fa + w * fb
    else:
        out = (torch.sin((1 - w) * theta) * fa + torch.sin(w * theta) * fb) / torch.sin(theta)
    return out.to(a.dtype).reshape(-1, *a.shape[1:])


def seed_noise(seed: int, shape: tuple[int, ...]) -> Tensor:
    """The x_T ``(1, C, H, W)`` a one-image job with ``seed`` draws (given its labels, nothing is drawn first)."""
    return draw_noise((1, *shape), torch.Generator().manual_seed(seed), "cpu")


def interpolation_run(spec: SamplingSpec, model: SamplingModel, ends: tuple[int | Tensor, int | Tensor],
                      labels: tuple[int | None, int | None] | None = None, defaults: ServerDefaults = ServerDefaults(),
                      max_n: int | None = None) -> SamplingRun:
    """A run of ``spec.n`` images from one end's x_T to the other's, under ``labels`` blended from the first to the
    second (None: "no label" throughout); ``spec`` gives the sampler and its options. An end is a seed (the x_T
    its one-image job draws) or an x_T ``(1, C, H, W)`` itself, such as an image's inversion
    (:func:`engine.sampling.invert.invert`), so a strip can run from your digit to a seed's.

    Raises :class:`SpecError` naming ``sampler`` when it is not deterministic, and ``labels`` for a bad label."""
    k = spec.n
    if k < 2:
        raise SpecError("n", f"n must be ≥ 2 images along the strip, got {k}", k)
    conditional = model.num_classes > 0
    if labels is not None and not conditional:
        raise SpecError("labels", "labels: this model is unconditional", list(labels))
    first, last = labels if labels is not None else (None, None)
    w = torch.linspace(0.0, 1.0, k)
    for e in ends:
        if isinstance(e, Tensor) and tuple(e.shape) != (1, *model.sample_shape):
            raise ValueError(f"an x_T end must have shape {(1, *model.sample_shape)}, got {tuple(e.shape)}")
    a, b = (seed_noise(e, model.sample_shape) if isinstance(e, int) else e.detach().float().cpu() for e in ends)
    x_T = slerp(a, b, w)
    seed = next((e for e in ends if isinstance(e, int)), 0)  # a deterministic run draws nothing that shows
    run = resolve(spec.replace(seed=seed, sampler=spec.sampler or DEFAULT_INTERPOLATION_SAMPLER,
                               labels=[first] * k if conditional else None),
                  model, defaults, Start(x_T, model.diffusion.T - 1), max_n)
    full = run.spec
    if full.sampler not in DETERMINISTIC or full.eta:
        raise SpecError("sampler", f"sampler: an interpolation needs a deterministic sampler, one of {DETERMINISTIC} "
                                   f"(with eta 0), got {full.sampler!r}" + (f" with eta {full.eta:g}" if full.eta
                                                                            else ""), full.sampler)
    if run.cond is None or last == first:
        return run
    null = run.cond.null_label
    if last is not None and not 0 <= last < null:
        raise SpecError("labels", f"labels: each must be a class in [0, {null - 1}] or null, got {last}", list(labels))
    to = torch.full((k,), null if last is None else last, dtype=torch.long)
    if first is None:  # from no label to a class: blend the "no label" embedding out
        run = dataclasses.replace(run, cond=dataclasses.replace(run.cond, labels=to, mix_to=run.cond.labels,
                                                                mix=1.0 - w))
        return run
    return dataclasses.replace(run, cond=dataclasses.replace(run.cond, mix_to=to, mix=w))
