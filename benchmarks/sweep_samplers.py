"""Quality of samplers (and, on a class-conditional model, guidance scales), scored by the digit classifier.

sampler × spacing × steps × guidance. Each configuration draws ``--n`` samples in batches of 125 with
seeds 0, 1, … (the layout of ``ddpm eval --batch-size 125``), so every row sees the same x_T. Results
are appended to a JSONL file as they finish, and a rerun skips configurations already there. Prints a
markdown table.

    python benchmarks/sweep_samplers.py --n 1000 --samplers dpmpp_2m dpmpp_2m_sde --spacings logsnr \\
        --steps 8 10 12 15 20 25 --out runs/sweep.jsonl
    python benchmarks/sweep_samplers.py --n 1000 --samplers dpmpp_2m --spacings linspace --steps 10 \\
        --guidance 0 1 1.5 2 3 5 --labels each --out runs/guidance.jsonl
    python benchmarks/sweep_samplers.py --n 500 --samplers ddpm ddim dpmpp_2m plms pndm sde_em pc \\
        --spacings linspace --evaluations 8 16 32 --out runs/part2.jsonl

``--evaluations E`` replaces ``--steps``: each sampler gets the steps that cost E model evaluations (plms
E − 1, pndm E − 9, pc with one corrector step E/2), and a sampler that cannot spend exactly E is skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from engine import DEFAULT_GUIDANCE, SamplingSpec, load_model, resolve
from engine.evaluation.metrics import DigitMetrics, class_accuracy, generate, requested_labels

BATCH = 125


def steps_for(sampler: str, evaluations: int) -> int | None:
    """The steps that cost ``evaluations`` model evaluations (pc with its default one corrector step)."""
    steps = {"plms": evaluations - 1, "pndm": evaluations - 9}.get(sampler, evaluations)
    if sampler == "pc":
        steps = evaluations // 2 if evaluations % 2 == 0 else 0
    return steps if steps >= (4 if sampler == "pndm" else 1) else None


def run_config(m, metrics: DigitMetrics, spec: SamplingSpec) -> dict:
    t0 = time.perf_counter()
    images = generate(m, spec, BATCH, "cpu", progress=False)
    seconds = time.perf_counter() - t0
    row = {"model": str(m.path), "prior": str(m.prior_path) if m.prior_path else None, "sampler": spec.sampler,
           "spacing": spec.spacing, "steps": spec.steps, "eta": spec.eta, "n": spec.n, "seconds": round(seconds, 1),
           "evaluations": resolve(spec.replace(n=1), m).plan.K}
    if m.num_classes:
        row.update(labels=spec.labels, guidance=spec.guidance, guidance_interval=spec.guidance_interval)
        asked = requested_labels(m, spec, BATCH)
        if bool((asked < m.num_classes).any()):
            row["class_accuracy"] = class_accuracy(images, asked, m.num_classes)
    return {**row, **{k: round(float(v), 4) for k, v in metrics.evaluate(images).items()}}


def _key(r: dict) -> tuple:
    """What a row measured (rows of an unconditional model have no labels or guidance)."""
    return (r.get("model"), r.get("prior"), r["sampler"], r["spacing"], r["steps"], r["n"], r.get("labels"),
            r.get("guidance"), tuple(r["guidance_interval"]) if r.get("guidance_interval") else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file (default: the bundled one)")
    ap.add_argument("--uncond-model", default=None, help="an unconditional model file for the 'no label' rows, or "
                    "'none' (default: as `ddpm eval`, the bundled prior for the bundled model, else none)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde"])
    ap.add_argument("--spacings", nargs="+", default=["linspace", "leading", "trailing", "logsnr", "karras"])
    ap.add_argument("--steps", nargs="+", type=int, default=[8, 10, 12, 15, 20, 25])
    ap.add_argument("--evaluations", nargs="+", type=int, default=None,
                    help="instead of --steps: equal model evaluations across samplers")
    ap.add_argument("--eta", type=float, default=None, help="for ddim and dpmpp_2m_sde (default: theirs)")
    ap.add_argument("--labels", choices=["each", "any", "none"], default="each",
                    help="class-conditional models: 100 of each class per 1000 ('each'), drawn, or no label")
    ap.add_argument("--guidance", nargs="+", type=float, default=[DEFAULT_GUIDANCE],
                    help="class-conditional models: the guidance scales s")
    ap.add_argument("--guidance-interval", nargs=2, type=int, default=None, metavar=("T_LO", "T_HI"),
                    help="class-conditional models: the timesteps guidance applies at (default: the engine's)")
    ap.add_argument("--out", default="runs/sweep.jsonl")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    seen = {_key(r) for r in done}
    m = load_model(args.model, "cpu", args.uncond_model)
    prior = str(m.prior_path) if m.prior_path else None
    labels = args.labels if m.num_classes else None
    scales = args.guidance if m.num_classes else [None]
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    metrics = DigitMetrics()
    for sampler in args.samplers:
        for spacing in args.spacings:
            budgets = [steps_for(sampler, e) for e in args.evaluations] if args.evaluations else args.steps
            for steps in [k for k in budgets if k is not None]:
                for s in scales:
                    eta = args.eta if sampler in ("ddim", "dpmpp_2m_sde") else None
                    key = (str(m.path), prior, sampler, spacing, steps, args.n, labels if s is not None else None, s,
                           interval if s is not None else None)
                    if key in seen:
                        continue
                    row = run_config(m, metrics, SamplingSpec(n=args.n, sampler=sampler, steps=steps, spacing=spacing,
                                                              eta=eta, labels=labels, guidance=s, seed=0,
                                                              guidance_interval=interval if s is not None else None))
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    done.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| model | sampler | spacing | steps | NFE | labels | s | class accuracy | confident share | class entropy "
          "| FLD | within-class distance | near-copies | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(done, key=lambda r: (r["n"], str(r.get("model")), r["sampler"], r["spacing"], r["steps"],
                                          str(r.get("labels")), r.get("guidance") or 0)):
        acc = f"{r['class_accuracy']:.3f}" if "class_accuracy" in r else "–"
        wcd = f"{r['within_class_distance']:.2f}" if "within_class_distance" in r else "–"
        model = Path(r.get("model") or "bundled").name + (f" + {Path(r['prior']).name}" if r.get("prior") else "")
        print(f"| {model} | {r['sampler']} | {r['spacing']} | {r['steps']} | {r.get('evaluations', r['steps'])} | "
              f"{r.get('labels') or '–'} | {r.get('guidance', '–')} | {acc} | {r['confident_share']:.3f} | "
              f"{r['class_entropy']:.3f} | {r['fld']:.1f} | {wcd} | {100 * r['near_copy_share']:.1f} % | "
              f"{r['seconds']} |")


if __name__ == "__main__":
    main()
