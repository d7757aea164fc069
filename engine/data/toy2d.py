"""2D point distributions for the playground, as float32 ``(N, 2)`` tensors drawn from a generator.

``8gaussians``: eight modes at radius 2, centres 2·(cos πk/4, sin πk/4), std 0.1. ``moons``: two interleaving
half circles. ``swissroll``: a 2D spiral. ``checkerboard``: uniform on the dark squares of a 4×4 board on
[−2, 2]². A visitor's own points come as a ``.npy`` of shape (N, 2), resampled with replacement.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

ToyName = Literal["8gaussians", "moons", "swissroll", "checkerboard"]
TOY_DATASETS: tuple[ToyName, ...] = ("8gaussians", "moons", "swissroll", "checkerboard")
DEFAULT_TOY_DATASET: ToyName = "8gaussians"
#: The 8gaussians modes' centres ``(8, 2)`` and spread.
EIGHT_CENTRES = torch.tensor([[2 * math.cos(math.pi * k / 4), 2 * math.sin(math.pi * k / 4)] for k in range(8)])
EIGHT_STD = 0.1
#: The playground's board, ``[−BOARD, BOARD]²``: it holds every dataset above, and points a visitor draws.
BOARD = 3.0
#: The most points a visitor may draw (the API's limit on ``points``).
MAX_DRAWN_POINTS = 2000


def toy_points(name: ToyName, n: int, generator: torch.Generator) -> Tensor:
    """``n`` points of ``name``, float32 ``(n, 2)``."""
    if name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=generator)
        return EIGHT_CENTRES[k] + EIGHT_STD * torch.randn(n, 2, generator=generator)
    if name == "moons":
        u = torch.rand(n, generator=generator) * math.pi
        upper = torch.rand(n, generator=generator) < 0.5
        x = torch.where(upper, torch.cos(u), 1 - torch.cos(u))
        y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
        pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
        return pts + 0.05 * torch.randn(n, 2, generator=generator)
    if name == "swissroll":
        r = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
        pts = torch.stack([r * torch.cos(r), r * torch.sin(r)], 1) / 5.0
        return pts + 0.05 * torch.randn(n, 2, generator=generator)
    if name == "checkerboard":
        x = torch.rand(n, generator=generator) * 4 - 2
        row = torch.randint(0, 2, (n,), generator=generator) * 2 + (torch.floor(x) % 2)  # the dark squares
        y = torch.rand(n, generator=generator) + row - 2
        return torch.stack([x, y], 1)
    raise ValueError(f"dataset must be one of {TOY_DATASETS}, got {name!r}")


def load_points(path: str | Path) -> Tensor:
    """A visitor's points: a ``.npy`` of shape (N, 2), N ≥ 2, finite; ValueError otherwise."""
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 2:
        raise ValueError(f"--points: expected an array of shape (N, 2) with N ≥ 2, got {arr.shape}")
    t = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    if not bool(torch.isfinite(t).all()):
        raise ValueError("--points: the array holds NaN or infinite values")
    return t


def resample(points: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` rows of ``points`` drawn with replacement."""
    return points[torch.randint(0, points.shape[0], (n,), generator=generator)]
