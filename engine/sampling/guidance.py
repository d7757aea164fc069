"""Class labels and classifier-free guidance (Ho & Salimans 2022) for a batch of samples.

A guided sample with label c and scale s needs two model outputs, conditional and unconditional,
combined as ε̂ = ε_u + s·(ε_c − ε_u) (eq. (6) with w = s − 1; s is diffusers' ``guidance_scale``:
1 is plain conditional, 0 unconditional). The combination is affine with weights summing to one,
so it applies to any prediction type (ε, x0 or v) before the step. :func:`guided_forward` puts both
rows of every guided sample into ONE forward pass with the rest of the batch.

Guidance is a model wrapper, after k-diffusion's CFG denoiser: :func:`as_denoiser` turns a network into the
:data:`Denoiser` the stepper calls, so the step sequence never asks which kind it has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from ..models.base import ConditionalModel, Model

#: A request's labels: one class, ``"any"`` (uniform, from the job's generator), ``"each"`` (classes 0, 1, … in
#: turn), ``"none"`` ("no label"), or one class or None per sample (None: the default, which resolve() fills).
Labels = int | Literal["any", "each", "none"] | list[int | None] | None


#: A guidance interval that holds every timestep: guidance at every step.
EVERY_STEP = (0, 2**31 - 1)


@dataclass(frozen=True)
class Conditioning:
    """Per-sample labels ``(B,)`` (``null_label`` = no label), guidance scales ``(B,)`` and guidance intervals
    ``(B, 2)``: a sample is guided at model timesteps t with ``interval[0] ≤ t ≤ interval[1]`` and purely
    conditional (s = 1) at the others (Kynkäänniemi et al. 2024).

    ``mix_to`` ``(B,)`` and ``mix`` ``(B,)``, when set, blend each labelled sample's class embedding towards
    another class: (1 − mix)·e(label) + mix·e(mix_to) (an interpolation strip's class morph)."""

    labels: Tensor
    scale: Tensor
    interval: Tensor
    null_label: int
    mix_to: Tensor | None = None
    mix: Tensor | None = None

    @property
    def mixing(self) -> tuple[Tensor, Tensor]:
        """``(mix_to, mix)``, no blend where unset."""
        if self.mix_to is None or self.mix is None:
            return self.labels, torch.zeros_like(self.scale)
        return self.mix_to, self.mix

    @staticmethod
    def cat(rows: Sequence[Conditioning | None]) -> Conditioning | None:
        """Stack the rows of several jobs into one batch (None when no job is conditioned)."""
        if all(r is None for r in rows):
            return None
        if any(r is None for r in rows):
            raise ValueError("jobs of one batch must all be conditioned, or none of them")
        nulls = {r.null_label for r in rows}
        if len(nulls) != 1:
            raise ValueError("jobs of one batch must share the model's 'no label' row")
        mixed = any(r.mix is not None for r in rows)
        to, mix = (torch.cat(parts) for parts in zip(*(r.mixing for r in rows), strict=True)) if mixed else (None, None)
        return Conditioning(*(torch.cat([getattr(r, f.name) for r in rows]) for f in fields(Conditioning)[:3]),
                            null_label=nulls.pop(), mix_to=to, mix=mix)

    @staticmethod
    def of(labels: Tensor, scale: float | Tensor, null_label: int, interval: tuple[int, int] = EVERY_STEP
           ) -> Conditioning:
        """One interval for every sample of ``labels``, and one scale for all of them or ``(n,)`` scales."""
        n, dev = labels.shape[0], labels.device
        scales = (scale.to(dev, torch.float32) if isinstance(scale, Tensor)
                  else torch.full((n,), float(scale), device=dev))
        return Conditioning(labels, scales, torch.tensor([interval], dtype=torch.long, device=dev).expand(n, 2),
                            null_label)

    def to(self, device: torch.device | str) -> Conditioning:
        def move(v: Tensor | None) -> Tensor | None:
            return None if v is None else v.to(device)

        return Conditioning(self.labels.to(device), self.scale.to(device), self.interval.to(device), self.null_label,
                            move(self.mix_to), move(self.mix))

    def scale_at(self, t: Tensor) -> Tensor:
        """Each sample's scale at its timestep ``t`` ``(B,)``: its own inside its interval, 1 outside."""
        inside = (t >= self.interval[:, 0]) & (t <= self.interval[:, 1])
        return torch.where(inside, self.scale, torch.ones_like(self.scale))


def resolve_labels(spec: Labels | Sequence[int | None], n: int, num_classes: int,
                   generator: torch.Generator | None) -> Tensor:
    """Labels ``(n,)`` for a request: ``num_classes`` stands for "no label".

    ``"any"`` draws uniform classes from ``generator`` (the job's, before its x_T), so a seed fixes them.
    """
    if num_classes < 1:
        raise ValueError("labels: this model is unconditional; it takes no labels")
    if spec == "each":
        spec = [i % num_classes for i in range(n)]
    if spec == "any":
        gdev = generator.device if generator is not None else torch.device("cpu")
        return torch.randint(num_classes, (n,), generator=generator, device=gdev).cpu()
    if isinstance(spec, str) and spec != "none":
        raise ValueError(f"labels: a class, 'any', 'each', 'none' or one entry per sample, got {spec!r}")
    if spec is None or isinstance(spec, (int, str)):
        spec = [None if spec is None or spec == "none" else spec] * n
    if len(spec) != n:
        raise ValueError(f"labels: a list needs one entry per sample ({n}), got {len(spec)}")
    out = []
    for v in spec:
        if v is None or v == "none":
            out.append(num_classes)
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_classes:
            out.append(v)
        else:
            raise ValueError(f"labels: each entry must be a class in [0, {num_classes - 1}] or null, got {v!r}")
    return torch.tensor(out, dtype=torch.long)


def one_hot(labels: Tensor, classes: int) -> Tensor:
    """Labels ``(B,)`` as float weights ``(B, classes)``."""
    return torch.nn.functional.one_hot(labels, classes).float()


def guided_forward(model: ConditionalModel, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
    """Model outputs ``(B, C, H, W)`` with guidance applied, from one forward over B + G rows.

    G counts the samples that need an unconditional row as well: those with a label and s ≠ 1 at this step
    (s = 0 with a label is simply the unconditional row; outside its guidance interval a sample has s = 1).
    """
    null = cond.null_label
    scale = cond.scale_at(t)
    labels = torch.where(scale == 0, torch.full_like(cond.labels, null), cond.labels)
    guided = ((labels != null) & (scale != 1)).nonzero().squeeze(1)
    y: Tensor = labels
    if cond.mix is not None:  # label weights: each labelled row's blend, one-hot elsewhere
        to, mix = cond.mixing
        w = torch.where(labels == null, torch.zeros_like(mix), mix).unsqueeze(1)
        y = (1 - w) * one_hot(labels, null + 1) + w * one_hot(to, null + 1)
    if guided.numel() == 0:
        return model(x, t, y)
    uncond = torch.full_like(guided, null)
    out = model(torch.cat([x, x[guided]]), torch.cat([t, t[guided]]),
                torch.cat([y, one_hot(uncond, null + 1)]) if y.is_floating_point() else torch.cat([labels, uncond]))
    b = x.shape[0]
    eps_c, eps_u = out[:b], out[b:]
    s = scale[guided].to(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
    eps_c[guided] = eps_u + s * (eps_c[guided] - eps_u)
    return eps_c


#: What the stepper calls: ``denoiser(x_t (B, C, H, W), t (B,), cond (B rows) or None) -> output (B, C, H, W)``.
Denoiser = Callable[[Tensor, Tensor, "Conditioning | None"], Tensor]


def as_denoiser(net: Callable[..., Tensor], conditional: bool) -> Denoiser:
    """The function the stepper calls for ``net``: guided when ``net`` is class-conditional."""
    return ClassifierFreeGuidance(net) if conditional else Unconditioned(net)


@dataclass(frozen=True)
class Unconditioned:
    """An unconditional network as a :data:`Denoiser`: it takes no conditioning."""

    net: Model

    def __call__(self, x: Tensor, t: Tensor, cond: Conditioning | None) -> Tensor:
        if cond is not None:
            raise ValueError("labels: this model is unconditional; it takes no labels")
        return self.net(x, t)


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """A class-conditional network as a :data:`Denoiser`: :func:`guided_forward`."""

    net: ConditionalModel

    def __call__(self, x: Tensor, t: Tensor, cond: Conditioning | None) -> Tensor:
        if cond is None:
            raise ValueError("a class-conditional model needs each sample's label (its 'no label' row included)")
        return guided_forward(self.net, x, t, cond)
