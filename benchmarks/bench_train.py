"""Our trainer's img/s vs the tutorial's plain loop (``seed loop``), same model and batch, in one run.

    .venv/bin/python benchmarks/bench_train.py [--preset mnist] [--batch 32] [--steps 20] [--repeats 5]
                                               [--threads 2] [--no-compile]

Variants, each timed over ``--steps`` optimisation steps per repeat, repeats interleaved so that
machine noise hits every variant alike (the order rotates each repeat), median reported:

- ``seed loop``: benchmarks/seed_loop.py (DataLoader, q-sample, MSE, AdamW; nothing else);
- ``trainer``: ``Trainer.run`` as ``ddpm train`` runs it: warmup schedule, grad clipping, EMA,
  NaN guard, metrics.jsonl, tqdm bar. Periodic checkpoints and sample grids are excluded (their
  cost is reported on its own: one checkpoint's seconds, amortised over ``ckpt_every``);
- ``trainer + channels_last`` and ``trainer + compile`` (``torch.compile``, opt-in in the trainer).

Target: trainer / seed loop ≥ 0.95× (EMA and logging cost at most 5%).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_loop import SeedLoop

from engine.data.datasets import load_dataset
from engine.models.unet import build_model, count_parameters
from engine.training.config import preset_train_config
from engine.training.trainer import Trainer


class TimedTrainer:
    """A :class:`Trainer` run ``steps`` at a time; checkpoint seconds are measured and set apart."""

    def __init__(self, run_dir: Path, **cfg: object) -> None:
        self.trainer = Trainer(preset_train_config(**cfg), run_dir, progress=True)
        self.ckpt_seconds: list[float] = []
        inner = self.trainer.checkpoint

        def timed_checkpoint() -> Path | None:
            t0 = time.perf_counter()
            out = inner()
            self.ckpt_seconds.append(time.perf_counter() - t0)
            return out

        self.trainer.checkpoint = timed_checkpoint  # type: ignore[method-assign]

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps, less the end-of-run checkpoint."""
        tr = self.trainer
        tr.cfg.max_steps = tr.step + steps
        n_ck = len(self.ckpt_seconds)
        t0 = time.perf_counter()
        tr.run()
        return time.perf_counter() - t0 - sum(self.ckpt_seconds[n_ck:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mnist", help="training preset whose model is timed (default mnist)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (compile happens here)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (slow to compile)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base = preset_train_config(args.preset, batch_size=args.batch)
    batch = base.batch_size
    common = dict(name=args.preset, batch_size=batch, sample_every=0, ckpt_every=10**9, ckpt_minutes=1e9,
                  max_steps=10**9, device="cpu")
    images = load_dataset(base.dataset, "train", base.data_root, image_size=base.model.image_size).images
    torch.manual_seed(base.seed)
    seed = SeedLoop(build_model(base.model), images, batch, lr=base.lr, T=base.diffusion.T)

    variants: dict[str, Callable[[int], float]] = {"seed loop": seed.run}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {"trainer": TimedTrainer(Path(tmp, "a"), **common),
                    "trainer + channels_last": TimedTrainer(Path(tmp, "b"), channels_last=True, **common)}
        if not args.no_compile:
            trainers["trainer + compile"] = TimedTrainer(Path(tmp, "c"), compile=True, **common)
        variants.update({k: v.run for k, v in trainers.items()})
        warm: dict[str, float] = {}
        for name, fn in variants.items():
            warm[name] = fn(args.warmup)
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.repeats):  # rotate the order so no variant always runs after the same one
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(variants[name](args.steps))
        ckpt = statistics.median(trainers["trainer"].ckpt_seconds)

    ips = {k: batch * args.steps / statistics.median(v) for k, v in times.items()}
    params = count_parameters(seed.model)
    print(f"\nmodel preset {base.model.arch}/{args.preset} ({params / 1e6:.2f}M params), batch {batch}, "
          f"{args.steps} steps × {args.repeats} repeats (median), {args.threads} threads, torch {torch.__version__}\n")
    print("| variant | img/s | s/step | vs seed loop | vs trainer |")
    print("|---|---:|---:|---:|---:|")
    for k, v in ips.items():
        print(f"| {k} | {v:.1f} | {batch / v:.3f} | {v / ips['seed loop']:.3f}× | {v / ips['trainer']:.3f}× |")
    every = base.ckpt_every
    step_s = batch / ips["trainer"]
    print(f"\none checkpoint: {ckpt:.2f} s; every {every} steps that adds {100 * ckpt / (every * step_s):.2f}% "
          f"to the trainer's time")
    if "trainer + compile" in warm:
        print(f"compile: the {args.warmup} warm-up steps took {warm['trainer + compile']:.1f} s "
              f"(vs {warm['trainer']:.1f} s eager)")


if __name__ == "__main__":
    main()
