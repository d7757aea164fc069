"""A class-conditional network paired with a separate unconditional one for the "no label" rows."""

from __future__ import annotations

from torch import Tensor, nn


class UnconditionalPrior(nn.Module):
    """Answers rows labelled ``null_label`` with ``unconditional`` and the rest with ``conditional``.

    Classifier-free guidance's ε_u then comes from a network trained on every image for its whole run,
    not from the conditional network's label-dropout branch, which sees a tenth of the batches (Sadat et
    al. 2025, "Unconditional priors matter"). Both networks must share the diffusion they were trained on.
    """

    def __init__(self, conditional: nn.Module, unconditional: nn.Module, null_label: int) -> None:
        super().__init__()
        self.conditional, self.unconditional, self.null_label = conditional, unconditional, null_label

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)``, labels ``y`` ``(B,)`` or label weights ``(B, classes + 1)`` (None:
        all "no label") → ``(B, C', H, W)``. Rows wholly "no label" go to the unconditional network."""
        if y is None:
            return self.unconditional(x, t)
        null = y[:, self.null_label] >= 1.0 if y.is_floating_point() else y == self.null_label
        if bool(null.all()):
            return self.unconditional(x, t)
        if not bool(null.any()):
            return self.conditional(x, t, y)
        keep = ~null
        cond = self.conditional(x[keep], t[keep], y[keep])
        out = cond.new_empty((x.shape[0], *cond.shape[1:]))
        out[keep] = cond
        out[null] = self.unconditional(x[null], t[null])
        return out
