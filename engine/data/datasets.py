"""Training data: the bundled MNIST-5k, torchvision datasets from a local path, and image folders.

Every dataset yields float images ``(C, H, W)`` in [−1, 1] and an int label. Splits are seeded
and fixed, so the held-out images never leak into training. Augmentation is chosen per dataset:
horizontal flips for CIFAR-10 and image folders, never for digits (a flipped 2 is not a 2;
docs/ERRATA.md, E4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from ..assets import ASSET_DIR
from ..io.images import center_crop_resize, from_uint8

DatasetName = Literal["mnist5k", "mnist", "fashion_mnist", "cifar10", "folder"]
DATASETS: tuple[DatasetName, ...] = get_args(DatasetName)
BUNDLED = ASSET_DIR / "mnist5k.npz"
MNIST5K_HOLDOUT = 500  # images held out of training for evaluation (a seeded, fixed choice)
_SPLIT_SEED = 20200619  # fixed: changing it would leak held-out images into training


@dataclass
class ImageData:
    """A dataset materialised as tensors: ``images`` float32 ``(N, C, H, W)`` in [−1, 1]."""

    name: str
    images: Tensor
    labels: Tensor
    hflip: bool

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def _to_float(images_uint8: np.ndarray) -> Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` → float32 ``(N, C, H, W)`` in [−1, 1]."""
    return from_uint8(images_uint8[..., None] if images_uint8.ndim == 3 else images_uint8, (-1.0, 1.0))


def _split(n: int, holdout: int, split: str) -> np.ndarray:
    perm = np.random.default_rng(_SPLIT_SEED).permutation(n)
    if split == "train":
        return np.sort(perm[holdout:])
    if split == "test":
        return np.sort(perm[:holdout])
    if split == "all":
        return np.arange(n)
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


def load_dataset(
    name: str = "mnist5k",
    split: Literal["train", "test", "all"] = "train",
    data_root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageData:
    """Load a dataset fully into memory.

    ``mnist5k`` is bundled (500 held out, seeded). ``mnist``/``fashion_mnist``/``cifar10`` load
    torchvision's files from ``data_root`` (``download=True`` fetches them, for hosts online)
    and use their official test split. ``folder`` reads any image folder at ``data_root``
    (ImageFolder layout or flat), centre-cropped and resized to ``image_size`` (default 32),
    with 5% held out.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if name == "mnist5k":
        with np.load(BUNDLED) as z:
            images, labels = z["images"], z["labels"]
        idx = _split(len(images), MNIST5K_HOLDOUT, split)
        data = ImageData(name, _to_float(images[idx]), torch.from_numpy(labels[idx]).long(), hflip=False)
    elif name == "folder":
        data = _load_folder(data_root, image_size or 32, split)
    else:
        data = _load_torchvision(name, data_root, download, split)
    if image_size is not None and data.images.shape[-1] != image_size:
        data.images = torch.nn.functional.interpolate(
            data.images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        ).clamp(-1, 1)
    return data


def _load_torchvision(name: str, data_root: str | Path | None, download: bool, split: str) -> ImageData:
    import torchvision

    if data_root is None:
        raise ValueError(f"--data-root is required for dataset {name!r} (a folder with its files, or use --download)")
    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    parts = {"train": [True], "test": [False], "all": [True, False]}[split]
    xs, ys = [], []
    for train in parts:
        try:
            ds = cls(str(data_root), train=train, download=download)
        except RuntimeError as e:
            raise ValueError(f"--data-root {data_root}: {name} not found there ({e}); pass --download on a host "
                             "with internet") from None
        arr = ds.data.numpy() if isinstance(ds.data, Tensor) else np.asarray(ds.data)
        xs.append(arr)
        ys.append(np.asarray(ds.targets))
    images, labels = np.concatenate(xs), np.concatenate(ys)
    return ImageData(name, _to_float(images), torch.from_numpy(labels).long(), hflip=name == "cifar10")


_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


def _folder_files(data_root: str | Path | None) -> tuple[list[Path], list[str]]:
    """An image folder's files and its classes (the names of the folders holding them, sorted)."""
    if data_root is None or not Path(data_root).is_dir():
        raise ValueError(f"--data-root must be a folder of images for dataset 'folder', got {data_root!r}")
    files = sorted(p for p in Path(data_root).rglob("*") if p.suffix.lower() in _IMAGE_EXTS)
    if not files:
        raise ValueError(f"--data-root {data_root}: no images found ({', '.join(sorted(_IMAGE_EXTS))})")
    return files, sorted({p.parent.name for p in files})


def dataset_classes(name: str, data_root: str | Path | None = None) -> int:
    """How many classes a dataset's labels name: 10 for the digit sets and CIFAR-10; an image folder's
    subfolders (0 for a flat folder: one class is no condition)."""
    if name != "folder":
        return 10
    _, classes = _folder_files(data_root)
    return len(classes) if len(classes) > 1 else 0


def _load_folder(data_root: str | Path | None, size: int, split: str) -> ImageData:
    from PIL import Image

    files, classes = _folder_files(data_root)
    imgs = []
    for p in files:
        with Image.open(p) as im:
            imgs.append(np.asarray(center_crop_resize(im.convert("RGB"), size)))
    labels = np.array([classes.index(p.parent.name) for p in files])
    idx = _split(len(files), max(1, len(files) // 20), split)
    return ImageData("folder", _to_float(np.stack(imgs)[idx]), torch.from_numpy(labels[idx]).long(), hflip=True)


class EpochSampler:
    """Seeded batches over ``n`` items: epoch e uses permutation(seed + e); the position is
    ``(epoch, cursor)``, saved in checkpoints so a resumed run sees the exact same batches.

    Under DDP every rank holds the same sampler and takes its own slice of each global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, cursor: int = 0) -> None:
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} exceeds the dataset size {n}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.cursor = epoch, cursor
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def next_indices(self) -> Tensor:
        """The next global batch's indices ``(batch_size,)``; drops the ragged end of an epoch."""
        if self.cursor + self.batch_size > self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}
