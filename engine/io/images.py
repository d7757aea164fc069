"""Image conversion: float tensors ↔ uint8 batches, centre crops, grids, PNG bytes and files."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8_array(x: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map ``(N, C, H, W)`` in ``value_range`` to a uint8 ``(N, H, W, C)`` array; rounds half to even, NaN → 0.

    NumPy rather than torch on purpose: the server calls this on its frame-encoder thread, and a torch op
    over more than 32k elements there would give that thread an OpenMP team of its own, which slows the
    sampling worker's team (see :mod:`app.runtime.worker`).
    """
    lo, hi = value_range
    y = np.nan_to_num(np.rint((x.detach().float().cpu().numpy() - lo) / (hi - lo) * 255.0), nan=0.0)
    return np.ascontiguousarray(np.clip(y, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def to_uint8(x: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Map ``(N, C, H, W)`` in ``value_range`` to uint8 ``(N, H, W, C)`` on the CPU (see :func:`to_uint8_array`)."""
    return torch.from_numpy(to_uint8_array(x, value_range))


def make_grid(images: Tensor | np.ndarray, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile uint8 ``(N, H, W, C)`` images into one uint8 ``(H', W', C)`` grid, ``nrow`` per row."""
    arr = images.numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C) images, got {arr.dtype} {arr.shape}")
    n, h, w, c = arr.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        out[y : y + h, x : x + w] = arr[i]
    return out


def to_pil(grid: np.ndarray) -> Image.Image:
    """A uint8 ``(H, W, C)`` array with C in {1, 3} as a PIL image."""
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def png_bytes(grid: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG-encode a uint8 ``(H, W, C)`` array; level 1 trades a few bytes for much less encoding time."""
    buf = io.BytesIO()
    to_pil(grid).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_samples(path: str | os.PathLike, images: Tensor, nrow: int | None = None) -> Path:
    """Write uint8 ``(N, H, W, C)`` samples as a PNG grid (``.png``) or an ``.npz`` with ``images``."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".npz"):
        raise ValueError(f"--out must end in .png or .npz, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        to_pil(make_grid(images, nrow)).save(path)
    else:
        np.savez_compressed(path, images=images.numpy().astype(np.uint8))
    return path


def from_uint8(images: np.ndarray | Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """uint8 ``(N, H, W, C)`` (the layout of :func:`to_uint8` and of PIL/NumPy images) → contiguous float32
    ``(N, C, H, W)`` in ``value_range``. A caller holding ``(N, C, H, W)`` or grey ``(N, H, W)`` adapts its view."""
    t = images if isinstance(images, Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if t.dtype != torch.uint8 or t.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C) images, got {t.dtype} {tuple(t.shape)}")
    lo, hi = value_range
    return (t.permute(0, 3, 1, 2).float() / 255.0 * (hi - lo) + lo).contiguous()


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``img``, resized to ``size``×``size`` with bicubic filtering."""
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def image_as_x0(img: Image.Image, channels: int, size: int, value_range: tuple[float, float]) -> Tensor:
    """A picture as a model of ``channels`` × ``size``² sees it: grey or RGB, centre-cropped and resized,
    ``(1, C, H, W)`` float32 in ``value_range``."""
    arr = np.array(center_crop_resize(img.convert("L" if channels == 1 else "RGB"), size))
    return from_uint8(arr[None, ..., None] if arr.ndim == 2 else arr[None], value_range)
