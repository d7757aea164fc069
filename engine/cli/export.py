"""The ``export`` subcommand: a run directory's EMA weights and config as one model file (or a diffusers folder)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.config import TrainConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="turn a run directory into a model file (EMA weights + ddpm.config)")
    e.add_argument("run_dir", help="the run directory to export")
    e.add_argument("--out", required=True, help="output .safetensors file, or a folder for --format diffusers")
    e.add_argument("--format", choices=["ddpm", "diffusers"], default="ddpm")
    e.set_defaults(handler=run_export)


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
