"""Train the digit classifier used by `ddpm eval` on MNIST-5k's train split; report held-out accuracy.

    .venv/bin/python scripts/train_digit_classifier.py [--out PATH] [--epochs 12] [--threads 2]

Deterministic for a given seed and thread count; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.data.datasets import load_dataset
from engine.evaluation.classifier import WEIGHTS, DigitClassifier, save_classifier


def shift(x: torch.Tensor, g: torch.Generator, max_px: int = 2) -> torch.Tensor:
    """Random translations up to ±max_px (digits stay digits; no flips)."""
    pad = F.pad(x, (max_px,) * 4, value=-1.0)
    out = torch.empty_like(x)
    offs = torch.randint(0, 2 * max_px + 1, (x.shape[0], 2), generator=g)
    for i, (dy, dx) in enumerate(offs.tolist()):
        out[i] = pad[i, :, dy : dy + 28, dx : dx + 28]
    return out


def main(out: Path = WEIGHTS, epochs: int = 12, batch: int = 64, seed: int = 0) -> None:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * (len(train) // batch))
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train) - batch + 1, batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(model(shift(train.images[idx], g)), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(test.images).argmax(1) == test.labels).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}, held-out accuracy {acc:.4f}")
    save_classifier(model, out, {"held_out_accuracy": round(acc, 4), "epochs": epochs, "seed": seed,
                                     "train_images": len(train), "held_out_images": len(test)})
    print(f"wrote {out} in {time.time() - t0:.0f}s; held-out accuracy {acc:.4f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    main(a.out, a.epochs, seed=a.seed)
