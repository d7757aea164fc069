"""The tutorial's plain training loop (its ``train`` function; docs/ERRATA.md), as the baseline for ``bench_train.py``.

No EMA, no logging, no clipping, no warmup, no checkpoints: a shuffled ``DataLoader``, uniform t,
q-sample with a linear β schedule, MSE on ε, ``AdamW.step``. Written to match the tutorial's
per-step work, so that the only difference the benchmark sees is what our trainer adds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class SeedLoop:
    """The tutorial's loop over in-memory images ``(N, C, H, W)`` in [−1, 1]."""

    def __init__(self, model: nn.Module, images: Tensor, batch_size: int, lr: float = 1e-4, T: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 2e-2, seed: int = 0) -> None:
        self.model, self.T = model, T
        self.alpha_bar = torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, T), dim=0)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr)
        self.loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True, drop_last=True,
                                 generator=torch.Generator().manual_seed(seed))
        self._it: Iterator = iter(())
        self.mse = nn.MSELoss()

    def _next(self) -> Tensor:
        try:
            return next(self._it)[0]
        except StopIteration:  # a new epoch, as the tutorial's outer loop would start
            self._it = iter(self.loader)
            return next(self._it)[0]

    def step(self) -> Tensor:
        """One optimisation step on one batch; returns the loss (a 0-d tensor, not synced)."""
        self.model.train()
        x0 = self._next()
        t = torch.randint(0, self.T, (x0.shape[0],))
        ab = self.alpha_bar[t][:, None, None, None]
        noise = torch.randn_like(x0)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        loss = self.mse(self.model(x_t, t), noise)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach()  # the tutorial reads loss.item() only once per epoch

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - t0
