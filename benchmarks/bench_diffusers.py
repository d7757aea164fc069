"""Our sampling loop vs diffusers' scheduler loop, on the same diffusers UNet, same steps, one run.

    .venv/bin/python benchmarks/bench_diffusers.py [--batch 16] [--steps 50] [--repeats 5]

Both loops call the identical UNet2DModel (our mnist preset exported exactly to diffusers, random
weights) with the same batch; runs are interleaved and the median is reported, so machine
noise hits both sides alike. Target: ours / diffusers ≤ 1.0×.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from engine import ModelCard, SamplingPlan, build_model, load_model_file, preset_config, sample, save_model_file
from engine.io.diffusers_interop import export_diffusers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset_config("mnist")
        save_model_file(f"{tmp}/m.safetensors", build_model(cfg), ModelCard(model=cfg))
        export_diffusers(load_model_file(f"{tmp}/m.safetensors"), f"{tmp}/pipe")
        m = load_model_file(f"{tmp}/pipe")
        sched_cfg = dict(diffusers.DDPMScheduler.from_pretrained(f"{tmp}/pipe/scheduler").config)
    unet = m.net.unet
    shape = (args.batch, *m.sample_shape)
    rows = []
    for name, sched_cls, eta in (("DDPM", diffusers.DDPMScheduler, None), ("DDIM", diffusers.DDIMScheduler, 0.0)):
        sched = sched_cls.from_config(sched_cfg)
        plan = SamplingPlan.build(m.diffusion, "ddpm" if eta is None else "ddim", f"ddim{args.steps}", eta or 0.0)

        def theirs(sched=sched, eta=eta) -> None:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g)
            sched.set_timesteps(args.steps)
            with torch.inference_mode():
                for t in sched.timesteps:
                    out = unet(x, t).sample
                    kw = {"generator": g} if eta is None else {"eta": eta, "generator": g}
                    x = sched.step(out, t, x, **kw).prev_sample

        def ours(plan=plan) -> None:
            sample(m.net, m.diffusion, plan, shape, torch.Generator().manual_seed(0))

        ours(), theirs()  # warm-up
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            pairs = ((ours, t_ours), (theirs, t_theirs))
            for fn, acc in pairs if _ % 2 else pairs[::-1]:
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        a, b = statistics.median(t_ours), statistics.median(t_theirs)
        rows.append((name, a, b, a / b))
    print(f"batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}")
    print("| sampler | ours (s) | diffusers (s) | ours / diffusers |")
    print("|---|---|---|---|")
    for name, a, b, r in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {r:.3f}× |")


if __name__ == "__main__":
    main()
