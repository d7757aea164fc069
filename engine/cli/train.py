"""The ``train`` subcommand.

The ``train`` flags are generated from :class:`~engine.training.config.TrainConfig`'s fields (and a few
keys of the network and diffusion configs), in the manner of improved-diffusion's ``add_dict_to_argparser``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ..io.modelfile import DiffusionConfig
from ..models.unet import UNetConfig
from ..options import config_types
from ..training.config import NESTED_FLAGS, TRAIN_PRESETS, TrainConfig, preset_train_config
from .flags import add_field_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run directory (resumable)",
                       description="Every config flag defaults to the --preset recipe's value. With --resume the "
                                   "run's config.json is the base, and only flags that are safe to change on resume "
                                   "may be given; they are recorded in config.json and metrics.jsonl.")
    # Not config fields: the recipe to start from, where the run lives, and whether it continues.
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default=None, help="training recipe (default mnist)")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    add_config_flags(p)
    p.set_defaults(handler=run_train)


# ------------------------------------------------------------------------------ flags from the config
def _config_flags() -> list[tuple[str, Any, dict[str, Any]]]:
    """``(dest, annotation, metadata)`` of every flag the config declares, top-level then nested."""
    out = []
    hints = config_types(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("flag", True):
            out.append((f.name, hints[f.name], dict(f.metadata)))
    for name, (part, help_text) in NESTED_FLAGS.items():
        owner = UNetConfig if part == "model" else DiffusionConfig
        out.append((name, config_types(owner)[name], {"help": help_text}))
    return out


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field (``--batch-size`` for ``batch_size``): type, choices and help from the field.

    Every default is None, so that :func:`passed_config` can tell what the user actually gave.
    """
    for dest, annotation, meta in _config_flags():
        add_field_flag(p, dest, annotation, meta)


def passed_config(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The config flags the user gave: top-level fields, and ``{"model": …, "diffusion": …}`` keys."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {"model": {}, "diffusion": {}}
    for dest, *_ in _config_flags():
        value = getattr(args, dest)
        if value is None:
            continue
        if dest in NESTED_FLAGS:
            nested[NESTED_FLAGS[dest][0]][dest] = value
        else:
            top[dest] = value
    return top, nested


def _new_config(args: argparse.Namespace) -> TrainConfig:
    """The preset with the flags passed; a run on labelled data is class-conditional unless --num-classes 0."""
    from ..data.datasets import dataset_classes

    top, nested = passed_config(args)
    name, model = args.preset or "mnist", nested["model"]
    if "num_classes" not in model:
        # The dataset decides, so look at it first. --class-lr-scale is left out of that look: it is only
        # valid once the classes are known. (None means "not given" to preset_train_config; 0 is a value.)
        first = preset_train_config(name, **{**top, "class_lr_scale": None}, model_overrides=model,
                                    diffusion_overrides=nested["diffusion"])
        if not first.model.num_classes and first.model.arch == "unet":
            model = {**model, "num_classes": dataset_classes(first.dataset, first.data_root)}
    return preset_train_config(name, **top, model_overrides=model, diffusion_overrides=nested["diffusion"])


def _resumed_config(args: argparse.Namespace, run_dir: Path) -> TrainConfig:
    """The run's saved config with the flags the user passed applied; the trainer refuses unsafe changes."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"--resume: {cfg_path} does not exist")
    d = json.loads(cfg_path.read_text())
    top, nested = passed_config(args)
    if args.preset is not None:
        top["preset"] = args.preset
    d.update(top)
    for part, keys in nested.items():
        d[part] = {**d.get(part, {}), **keys}
    return TrainConfig.from_dict(d)


def run_train(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer

    run_dir = Path(args.run_dir or f"runs/{args.preset or 'mnist'}")
    cfg = _resumed_config(args, run_dir) if args.resume else _new_config(args)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir, resume=args.resume)
    res = trainer.run()
    if trainer.is_main:
        print(f"stopped by {res.stopped_by} at step {res.step} ({res.images_seen} images) after "
              f"{(time.perf_counter() - t0) / 60:.1f} min; checkpoint {res.last_checkpoint}")
    return 0
