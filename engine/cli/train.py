"""``train`` and ``export`` subcommands."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..training.config import TRAIN_PRESETS, TrainConfig, preset_train_config


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {v}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run directory (resumable)")
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="mnist", help="training recipe (default mnist)")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--dataset", choices=["mnist5k", "mnist", "fashion_mnist", "cifar10", "folder"])
    p.add_argument("--data-root", help="folder with the dataset's files (torchvision layout, or any image folder)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset (needs internet)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--lr-decay", choices=["constant", "cosine"], help="after warmup (default constant)")
    p.add_argument("--lr-min-ratio", type=float, help="cosine decay ends at lr × this at --max-steps (default 0.1)")
    p.add_argument("--init-from", metavar="MODEL_FILE",
                   help="start from this model file's weights (same network and schedule), e.g. to fine-tune")
    p.add_argument("--grad-clip", type=float, help="0 disables clipping")
    p.add_argument("--ema-decay", type=float, help="0 disables the EMA")
    p.add_argument("--max-steps", type=_positive_int)
    p.add_argument("--max-minutes", type=_positive_float)
    p.add_argument("--schedule", choices=["linear", "cosine"])
    p.add_argument("--T", type=_positive_int, dest="T")
    p.add_argument("--prediction", choices=["eps", "x0", "v"])
    p.add_argument("--timestep-sampling", choices=["uniform", "beta"])
    p.add_argument("--weighting", choices=["none", "min_snr"])
    p.add_argument("--grad-accum", type=_positive_int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (opt-in)")
    p.add_argument("--sample-every", type=int)
    p.add_argument("--ckpt-every", type=_positive_int)
    p.add_argument("--keep-last", type=_positive_int)
    p.add_argument("--ch", type=_positive_int, help="override the model width")
    p.add_argument("--dropout", type=float)
    p.set_defaults(handler=run_train)

    e = sub.add_parser("export", help="turn a run directory into a model file (EMA weights + ddpm.config)")
    e.add_argument("run_dir", help="the run directory to export")
    e.add_argument("--out", required=True, help="output .safetensors file, or a folder for --format diffusers")
    e.add_argument("--format", choices=["ddpm", "diffusers"], default="ddpm")
    e.set_defaults(handler=run_export)


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    over = {
        "dataset": args.dataset, "data_root": args.data_root, "batch_size": args.batch_size, "lr": args.lr,
        "warmup_steps": args.warmup_steps, "lr_decay": args.lr_decay, "lr_min_ratio": args.lr_min_ratio,
        "init_from": args.init_from, "max_steps": args.max_steps, "max_minutes": args.max_minutes,
        "timestep_sampling": args.timestep_sampling, "weighting": args.weighting, "grad_accum": args.grad_accum,
        "seed": args.seed, "device": args.device, "amp": args.amp, "channels_last": args.channels_last,
        "compile": args.compile, "sample_every": args.sample_every, "ckpt_every": args.ckpt_every,
        "keep_last": args.keep_last,
    }
    if args.download:
        over["download"] = True
    cfg = preset_train_config(args.preset, **over)
    if args.grad_clip is not None:
        cfg.grad_clip = args.grad_clip or None
    if args.ema_decay is not None:
        cfg.ema_decay = args.ema_decay or None
    model_over = {k: v for k, v in {"ch": args.ch, "dropout": args.dropout}.items() if v is not None}
    diff_over = {k: v for k, v in {"schedule": args.schedule, "T": args.T, "prediction": args.prediction}.items()
                 if v is not None}
    d = cfg.to_dict()
    d["model"].update(model_over)
    d["diffusion"].update(diff_over)
    return TrainConfig.from_dict(d)


def run_train(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer

    run_dir = Path(args.run_dir or f"runs/{args.preset}")
    if args.resume:
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise ValueError(f"--resume: {cfg_path} does not exist")
        cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        if args.max_steps:
            cfg.max_steps = args.max_steps
        if args.max_minutes:
            cfg.max_minutes = args.max_minutes
        # Speed-only switches may change between sessions; they never change the numbers' meaning.
        cfg.channels_last = cfg.channels_last or args.channels_last
        cfg.compile = cfg.compile or args.compile
    else:
        cfg = _config_from_args(args)
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
