"""What the samplers and the losses call: the model types, by signature.

A network is one of two kinds. ``Model`` predicts from ``(x_t, t)``; ``ConditionalModel`` also takes
per-sample labels, where the label ``num_classes`` means "no label". The sampling stepper calls neither
directly: it calls a :data:`~engine.sampling.guidance.Denoiser`, which takes the batch's conditioning
(or None) and hides which kind of network answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

if TYPE_CHECKING:
    from ..diffusion.gaussian import GaussianDiffusion

#: A noise predictor: ``model(x_t (B, C, H, W), t (B,)) -> output (B, C, H, W)``.
Model = Callable[[Tensor, Tensor], Tensor]
#: A class-conditional predictor: ``model(x_t (B, C, H, W), t (B,), y (B,)) -> output (B, C, H, W)``.
ConditionalModel = Callable[[Tensor, Tensor, Tensor], Tensor]


class SamplingModel(Protocol):
    """What sampling needs of a loaded model (:class:`engine.LoadedModel` is one)."""

    net: Callable[..., Tensor]
    diffusion: GaussianDiffusion

    @property
    def num_classes(self) -> int: ...

    @property
    def sample_shape(self) -> tuple[int, int, int]: ...
