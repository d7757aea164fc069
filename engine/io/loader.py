"""Load a model from whatever a path names: a model file, a diffusers folder, or nothing (the bundled model)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .diffusers_interop import is_diffusers_folder, load_diffusers_folder
from .modelfile import DEFAULT_MODEL, DEFAULT_PRIOR, LoadedModel, ModelFileError, load_safetensors_model


def load_model_file(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load ``path`` (default: the bundled MNIST model) onto ``device`` in eval mode.

    A directory is taken as a diffusers pipeline folder (see :mod:`engine.io.diffusers_interop`).
    """
    if path is not None and Path(path).is_dir():
        if not is_diffusers_folder(Path(path)):
            raise ModelFileError(f"{path}: a directory, but not a diffusers pipeline folder (no model_index.json)")
        return load_diffusers_folder(path, device)
    return load_safetensors_model(DEFAULT_MODEL if path is None else path, device)


def prior_for(path: str | os.PathLike | None, uncond_model: str | os.PathLike | None) -> str | os.PathLike | None:
    """The unconditional model file that answers the "no label" rows of the model at ``path``.

    ``uncond_model`` when given ("none": no file, the model's own label-dropout branch). Left None,
    :data:`DEFAULT_PRIOR` for the bundled default file, named or not (the pair its quality figures were
    measured with), and none for any other model.
    """
    if uncond_model is None:
        bundled = path is None or Path(path).resolve() == DEFAULT_MODEL.resolve()
        return DEFAULT_PRIOR if bundled else None
    return None if str(uncond_model) == "none" else uncond_model


def load_model(path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
               uncond_model: str | os.PathLike | None = None) -> LoadedModel:
    """:func:`load_model_file`, with the "no label" rows of a class-conditional model answered by the
    unconditional model file that :func:`prior_for` names, if any."""
    m = load_model_file(path, device)
    prior = prior_for(path, uncond_model)
    return m if prior is None else with_unconditional_prior(m, load_model_file(prior, device))


def with_unconditional_prior(model: LoadedModel, prior: LoadedModel) -> LoadedModel:
    """``model`` (class-conditional) with its "no label" rows answered by ``prior`` (unconditional).

    Raises ModelFileError unless both sample the same shape under the same diffusion.
    """
    from ..models.prior import UnconditionalPrior

    where = f"--uncond-model {prior.path}"
    if not model.num_classes:
        raise ModelFileError(f"{where}: {model.path} is unconditional; a prior only serves a class-conditional model")
    if prior.num_classes:
        raise ModelFileError(f"{where}: has {prior.num_classes} classes; the prior must be unconditional")
    if prior.sample_shape != model.sample_shape:
        raise ModelFileError(f"{where}: samples {prior.sample_shape}, the model {model.sample_shape}")
    ours, theirs = model.card.diffusion, prior.card.diffusion
    diff = sorted(k for k, v in vars(ours).items() if getattr(theirs, k) != v)
    if diff or not bool((model.diffusion.schedule.betas == prior.diffusion.schedule.betas).all()):
        raise ModelFileError(f"{where}: its diffusion differs from the model's in {diff or ['betas']}")
    net = UnconditionalPrior(model.net, prior.net, model.num_classes).eval()
    return dataclasses.replace(model, net=net, prior_path=prior.path)
