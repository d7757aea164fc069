"""Device names as users write them (``auto``, ``cpu``, ``cuda``, ``cuda:1``) → ``torch.device``."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is available, else the CPU; any other name must be a usable device.

    Raises ``ValueError`` with a one-line message for an unknown name, or for CUDA on a host without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    return dev
