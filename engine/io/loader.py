"""Load a model from whatever a path names: a model file, a diffusers folder, or nothing (the bundled model)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .diffusers_interop import is_diffusers_folder, load_diffusers_folder
from .modelfile import DEFAULT_MODEL, LoadedModel, ModelFileError, load_safetensors_model


def load_model_file(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load ``path`` (default: the bundled MNIST model) onto ``device`` in eval mode.

    A directory is taken as a diffusers pipeline folder (see :mod:`engine.io.diffusers_interop`).
    """
    if path is not None and Path(path).is_dir():
        if not is_diffusers_folder(Path(path)):
            raise ModelFileError(f"{path}: a directory, but not a diffusers pipeline folder (no model_index.json)")
        return load_diffusers_folder(path, device)
    return load_safetensors_model(DEFAULT_MODEL if path is None else path, device)
