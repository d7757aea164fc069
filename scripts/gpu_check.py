"""Timings for scripts/gpu_check.sh, one JSON line each; ``table`` turns them into markdown.

    python scripts/gpu_check.py sampling --preset cifar10 --batch 64 --steps 50 --dtype bf16 --device cuda
    python scripts/gpu_check.py training --preset cifar10 --batch 128 --steps 30 --amp bf16 [--compile] ...
    python scripts/gpu_check.py table RESULTS.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine import DiffusionConfig, SamplingPlan, build_model, preset_config, sample
from engine.training.config import preset_train_config
from engine.training.trainer import Trainer

# Dense bf16 tensor-core peaks from the vendor's data sheets (FLOP/s), matched on the device name in order.
PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("A10", 125e12))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _peak(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16 if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_flops(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x, t)
    return counter.get_total_flops()


def time_sampling(preset: str, batch: int, steps: int, dtype: str, device: torch.device) -> dict:
    """``steps``-step DDIM with a random-weight ``preset`` UNet at ``batch``, under autocast in ``dtype``;
    the floor is the UNet's FLOPs at the card's dense bf16 peak."""
    cfg = preset_config(preset)
    net = build_model(cfg).to(device).eval()
    diffusion = DiffusionConfig().build()
    plan = SamplingPlan.build(diffusion, "ddim", steps, 0.0, None)
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    x = torch.randn(shape, device=device)
    flops = _forward_flops(net, x, torch.zeros(batch, dtype=torch.long, device=device))
    amp = DTYPES[dtype]

    def run() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            sample(net, diffusion, plan, shape, torch.Generator().manual_seed(0), device)
        _sync(device)
        return time.perf_counter() - t0

    run()  # warm-up: cuDNN autotuning, allocator
    seconds = min(run() for _ in range(3))
    name = _device_name(device)
    peak = _peak(name)
    floor = flops * steps / peak if peak else None
    return {"what": "sampling", "device": name, "preset": preset, "batch": batch, "steps": steps, "dtype": dtype,
            "seconds": seconds, "ms_per_step": seconds / steps * 1000, "gflop_per_step": flops / 1e9,
            "floor_seconds": floor, "of_floor": floor / seconds if floor else None}


def _image_folder(root: Path, n: int, size: int) -> Path:
    """Random RGB images: training throughput does not depend on what the pixels show, and this host has
    no network to fetch CIFAR-10 from."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:05d}.png")
    return root


def time_training(preset: str, batch: int, steps: int, amp: str, compile_: bool, device: torch.device) -> dict:
    """Images per second of ``Trainer`` on ``preset``'s model, checkpoints and sample grids excluded;
    the first steps (compilation, autotuning) are not timed."""
    cfg0 = preset_train_config(preset)
    with tempfile.TemporaryDirectory() as tmp:
        data = _image_folder(Path(tmp, "images"), max(batch * 2, 64), cfg0.model.image_size)  # RGB, like CIFAR-10
        cfg = preset_train_config(preset, dataset="folder", data_root=str(data), batch_size=batch, amp=amp,
                                  compile=compile_, device=str(device), sample_every=0, ckpt_every=10**9,
                                  ckpt_minutes=1e9, max_steps=3, model_overrides={"in_channels": 3, "out_channels": 3})
        trainer = Trainer(cfg, Path(tmp, "run"), progress=False)
        trainer.run()  # the untimed first steps
        saving = []  # a run ends with a checkpoint: its seconds are not training's
        checkpoint = trainer.checkpoint

        def timed_checkpoint() -> Path | None:
            t0 = time.perf_counter()
            out = checkpoint()
            saving.append(time.perf_counter() - t0)
            return out

        trainer.checkpoint = timed_checkpoint  # type: ignore[method-assign]
        trainer.cfg.max_steps = trainer.step + steps
        _sync(device)
        t0 = time.perf_counter()
        trainer.run()
        _sync(device)
        seconds = time.perf_counter() - t0 - sum(saving)
    return {"what": "training", "device": _device_name(device), "preset": preset, "batch": batch, "steps": steps,
            "amp": amp, "compile": compile_, "img_per_s": batch * steps / seconds}


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def table(path: Path) -> str:
    rows = ["| measurement | setting | result |", "| --- | --- | --- |"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["what"] == "sampling":
            rows.append(f"| sampling, {r['preset']} UNet (random weights) | batch {r['batch']}, {r['steps']} DDIM "
                        f"steps, {r['dtype']} | {r['ms_per_step']:.2f} ms/step ({r['gflop_per_step']:.0f} GFLOP); "
                        f"floor {_fmt(r['floor_seconds'] and r['floor_seconds'] / r['steps'] * 1000, '.2f')} ms/step, "
                        f"{_fmt(r['of_floor'] and r['of_floor'] * 100, '.0f')}% of peak |")
        elif r["what"] == "training":
            rows.append(f"| training, {r['preset']} | batch {r['batch']}, AMP {r['amp']}, "
                        f"{'compile' if r['compile'] else 'eager'} | {r['img_per_s']:.0f} img/s |")
        else:
            rows.append(f"| {r['what']} | {r.get('setting', '')} | {r['result']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("sampling", "training"):
        p = sub.add_parser(name)
        p.add_argument("--preset", default="cifar10")
        p.add_argument("--batch", type=int, required=True)
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--device", default="cuda")
        if name == "sampling":
            p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
        else:
            p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="bf16")
            p.add_argument("--compile", action="store_true")
    p = sub.add_parser("table")
    p.add_argument("results", type=Path)
    args = ap.parse_args()
    if args.cmd == "table":
        print(table(args.results))
        return
    device = torch.device(args.device)
    if args.cmd == "sampling":
        res = time_sampling(args.preset, args.batch, args.steps, args.dtype, device)
    else:
        res = time_training(args.preset, args.batch, args.steps, args.amp, args.compile, device)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
