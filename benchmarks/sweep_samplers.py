"""Quality of few-step samplers on the bundled model: sampler × spacing × steps, scored by the digit classifier.

Each configuration draws ``--n`` samples in batches of 125 with seeds 0, 1, … (the layout of
``ddpm eval --batch-size 125``), so every row sees the same x_T. Results are appended to a JSONL file
as they finish, and a rerun skips configurations already there. Prints a markdown table.

    python benchmarks/sweep_samplers.py --n 1000 --samplers dpmpp_2m dpmpp_2m_sde --spacings logsnr \
        --steps 8 10 12 15 20 25 --out runs/sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engine import SamplingPlan, load_model_file, sample, to_uint8
from engine.evaluation.metrics import DigitMetrics, from_uint8

BATCH = 125


def run_config(m, metrics: DigitMetrics, sampler: str, spacing: str, steps: int, n: int, eta: float | None) -> dict:
    plan = SamplingPlan.build(m.diffusion, sampler, steps, eta, spacing=spacing)
    t0 = time.perf_counter()
    chunks = []
    for b, start in enumerate(range(0, n, BATCH)):
        size = min(BATCH, n - start)
        x = sample(m.net, m.diffusion, plan, (size, *m.sample_shape), torch.Generator().manual_seed(b))
        chunks.append(from_uint8(to_uint8(x, m.card.value_range), m.card.value_range))
    seconds = time.perf_counter() - t0
    res = metrics.evaluate(torch.cat(chunks))
    return {"sampler": sampler, "spacing": spacing, "steps": steps, "eta": plan.eta, "n": n,
            "seconds": round(seconds, 1), **{k: round(float(v), 4) for k, v in res.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde"])
    ap.add_argument("--spacings", nargs="+", default=["linspace", "leading", "trailing", "logsnr", "karras"])
    ap.add_argument("--steps", nargs="+", type=int, default=[8, 10, 12, 15, 20, 25])
    ap.add_argument("--eta", type=float, default=None, help="for ddim and dpmpp_2m_sde (default: theirs)")
    ap.add_argument("--out", default="runs/sweep.jsonl")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    key = lambda r: (r["sampler"], r["spacing"], r["steps"], r["n"])  # noqa: E731
    seen = {key(r) for r in done}
    m = load_model_file()
    metrics = DigitMetrics()
    for sampler in args.samplers:
        for spacing in args.spacings:
            for steps in args.steps:
                if (sampler, spacing, steps, args.n) in seen:
                    continue
                eta = args.eta if sampler in ("ddim", "dpmpp_2m_sde") else None
                row = run_config(m, metrics, sampler, spacing, steps, args.n, eta)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done.append(row)
                print(json.dumps(row), flush=True)
    print("\n| sampler | spacing | steps (NFE) | confident share | class entropy | FLD | near-copies | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(done, key=lambda r: (r["n"], r["sampler"], r["spacing"], r["steps"])):
        print(f"| {r['sampler']} | {r['spacing']} | {r['steps']} | {r['confident_share']:.3f} | "
              f"{r['class_entropy']:.3f} | {r['fld']:.1f} | {100 * r['near_copy_share']:.1f} % | {r['seconds']} |")


if __name__ == "__main__":
    main()
