"""Finished sampling batches kept on disk, so a long ``ddpm eval`` resumes where it stopped.

A 1000-step DDPM evaluation of 1000 images takes hours on a small CPU. Each finished batch is
written atomically as ``<model sha256[:16]>-<sampler><K>-eta<eta>-seed<seed>-n<n>.safetensors``
holding one uint8 tensor ``images`` ``(n, C, H, W)``. Everything that decides a batch's pixels is
in its name (the model file's bytes, or a diffusers folder's, the sampler, the step count, eta, the batch's seed and
size), so a file can only be reused for the batch it was drawn for, and a killed evaluation
run again with the same arguments redraws only the batches it had not finished.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..io.atomic import save_safetensors_atomic


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file, or of a folder (a diffusers
    pipeline): every file under it, by relative path and contents, in sorted order."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    h = hashlib.sha256()
    for file in files:
        if root.is_dir():
            h.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]


class SampleCache:
    """A folder of finished batches for one model file."""

    def __init__(self, root: str | os.PathLike, model_path: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.model_digest = file_digest(model_path)
        self.hits = 0  # batches read back instead of drawn, for the caller's report

    def path(self, tag: str, seed: int, n: int) -> Path:
        """``tag`` names how the batch was drawn (sampler, steps, η, …; see ``metrics.generate``)."""
        return self.root / f"{self.model_digest}-{tag}-seed{seed}-n{n}.safetensors"

    def load(self, tag: str, seed: int, shape: tuple[int, ...]) -> Tensor | None:
        """The batch's uint8 images ``shape`` ``(n, C, H, W)``, or None if it is absent or unreadable."""
        p = self.path(tag, seed, shape[0])
        if not p.is_file():
            return None
        try:
            images = load_file(str(p))["images"]
        except (SafetensorError, OSError, KeyError, ValueError):
            return None  # a torn or foreign file: draw the batch again and overwrite it
        if images.dtype != torch.uint8 or tuple(images.shape) != tuple(shape):
            return None
        self.hits += 1
        return images

    def store(self, tag: str, seed: int, images: Tensor) -> Path:
        """Write ``images`` (uint8 ``(n, C, H, W)``) atomically: temp file, fsync, rename."""
        if images.dtype != torch.uint8:
            raise ValueError(f"cached samples must be uint8, got {images.dtype}")
        p = self.path(tag, seed, images.shape[0])
        return save_safetensors_atomic(p, {"images": images.contiguous().cpu()})
