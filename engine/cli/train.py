"""``train`` and ``export`` subcommands.

The ``train`` flags are generated from :class:`~engine.training.config.TrainConfig`'s fields (and a few
keys of the network and diffusion configs), in the manner of improved-diffusion's ``add_dict_to_argparser``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io.modelfile import DiffusionConfig
from ..models.unet import UNetConfig
from ..training.config import (
    NESTED_FLAGS,
    TRAIN_PRESETS,
    TrainConfig,
    config_types,
    literal_choices,
    out_of_bounds,
    preset_train_config,
)


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

    e = sub.add_parser("export", help="turn a run directory into a model file (EMA weights + ddpm.config)")
    e.add_argument("run_dir", help="the run directory to export")
    e.add_argument("--out", required=True, help="output .safetensors file, or a folder for --format diffusers")
    e.add_argument("--format", choices=["ddpm", "diffusers"], default="ddpm")
    e.set_defaults(handler=run_export)


# ------------------------------------------------------------------------------ flags from the config
def _config_flags() -> list[tuple[str, Any, str, dict[str, Any]]]:
    """``(dest, annotation, help, bounds)`` of every flag the config declares, top-level then nested."""
    out = []
    hints = config_types(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("flag", True):
            out.append((f.name, hints[f.name], f.metadata["help"], dict(f.metadata)))
    for name, (part, help_text) in NESTED_FLAGS.items():
        owner = UNetConfig if part == "model" else DiffusionConfig
        out.append((name, config_types(owner)[name], help_text, {}))
    return out


def _value_type(annotation: Any) -> type:
    """``int``/``float``/``str``/``bool`` from an annotation such as ``float | None`` or ``Literal[...]``."""
    choices = literal_choices(annotation)
    if choices is not None:
        return type(choices[0])
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _parse(kind: type, bounds: dict[str, Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        why = None if value == 0 and bounds.get("zero_is_off") else out_of_bounds(value, bounds)
        if why:
            raise argparse.ArgumentTypeError(f"{why}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field (``--batch-size`` for ``batch_size``): type, choices and help from the field.

    Every default is None, so that :func:`passed_config` can tell what the user actually gave.
    """
    for dest, annotation, help_text, bounds in _config_flags():
        flag = "--" + dest.replace("_", "-")
        kind = _value_type(annotation)
        if kind is bool:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            choices = literal_choices(annotation)
            p.add_argument(flag, dest=dest, type=_parse(kind, bounds), choices=choices, default=None,
                           metavar=None if choices else bounds.get("metavar") or dest.upper(), help=help_text)


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
    from ..training.datasets import dataset_classes

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


def run_export(args: argparse.Namespace) -> int:
    from ..io.loader import load_model_file
    from ..io.modelfile import save_model_file
    from ..models.unet import build_model
    from ..training.state import latest_checkpoint, load_checkpoint
    from ..training.trainer import model_card_for_run

    run_dir = Path(args.run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"{run_dir}: not a run directory (no config.json)")
    cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ValueError(f"{run_dir}: no complete checkpoint to export")
    model_sd, ema_sd, state = load_checkpoint(ckpt)
    net = build_model(cfg.model)
    net.load_state_dict(ema_sd if ema_sd is not None else model_sd)
    card = model_card_for_run(run_dir, cfg, int(state["step"]), int(state["images_seen"]))
    if args.format == "ddpm":
        if not str(args.out).endswith(".safetensors"):
            raise ValueError(f"--out must end in .safetensors, got {args.out!r}")
        out = save_model_file(args.out, net, card)
    else:
        import tempfile

        from ..io.diffusers_interop import export_diffusers

        with tempfile.TemporaryDirectory() as tmp:
            loaded = load_model_file(save_model_file(Path(tmp) / "m.safetensors", net, card))
            out = export_diffusers(loaded, args.out)
    which = "EMA" if ema_sd is not None else "raw (no EMA in this run)"
    print(f"exported {which} weights of {ckpt.name} to {out}")
    return 0
