"""A small CNN digit classifier, trained by the project on the bundled MNIST-5k (train split).

Its penultimate features give the Fréchet distance FLD, and its probabilities give the
confident share and class entropy of generated digits (engine/evaluation/metrics.py). Weights ship in
engine/assets/digit_classifier.safetensors; scripts/train_digit_classifier.py rebuilds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from ..assets import ASSET_DIR
from ..io.atomic import save_safetensors_atomic

WEIGHTS = ASSET_DIR / "digit_classifier.safetensors"


class DigitClassifier(nn.Module):
    """``(B, 1, 28, 28)`` in [−1, 1] → logits ``(B, 10)``; :meth:`features` gives ``(B, 128)``."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, 10)
        self.drop = nn.Dropout(0.3)

    def features(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.features(x)))


def save_classifier(model: DigitClassifier, path: Path, facts: dict) -> None:
    """Write the weights and ``facts`` (JSON metadata) atomically: readers never see half a file."""
    save_safetensors_atomic(path, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                            {"digit_classifier": json.dumps(facts)})


def load_classifier(path: Path = WEIGHTS, device: torch.device | str = "cpu") -> tuple[DigitClassifier, dict]:
    """The shipped classifier in eval mode, and its facts (e.g. held-out accuracy)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: digit classifier weights missing; run scripts/train_digit_classifier.py")
    with safe_open(str(path), framework="pt") as f:
        facts = json.loads((f.metadata() or {}).get("digit_classifier", "{}"))
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    model = DigitClassifier()
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"{path}: not digit classifier weights ({str(e).splitlines()[0]})") from None
    return model.to(device).eval().requires_grad_(False), facts
