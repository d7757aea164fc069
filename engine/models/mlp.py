"""The 2D playground's denoiser: an MLP on points, with the UNet's sinusoidal time embedding, predicting ε."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .unet import timestep_embedding


class PointDenoiser(nn.Module):
    """``(x (B, 2), t (B,)) -> ε̂ (B, 2)``: the time embedding and x into ``depth`` SiLU layers of ``width``."""

    def __init__(self, width: int = 128, depth: int = 3, time_dim: int = 32) -> None:
        super().__init__()
        self.time_dim = time_dim
        layers: list[nn.Module] = [nn.Linear(2 + time_dim, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, timestep_embedding(t, self.time_dim)], dim=1))
