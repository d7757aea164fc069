"""The 2D playground's learning speed: 8gaussians mode coverage against training seconds (``ddpm toy``'s recipe),
2000 samples by respaced DDPM 100 from the EMA model. Prints a markdown table.

    python benchmarks/toy_coverage.py --seconds 2 5 10 20 [--via-server]

``--via-server`` trains each through a playground job (POST /api/v1/toy/jobs) of one ``ddpm serve`` of the
bundled model at torch's default threads, with no sampling job beside it, as the page does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.data.toy2d import toy_points  # noqa: E402
from engine.sampling.loop import last_frame  # noqa: E402
from engine.training.toy import ToyTrainer, mode_coverage  # noqa: E402


def in_process(seconds: float, seed: int) -> tuple[int, torch.Tensor]:
    trainer = ToyTrainer(lambda n, g: toy_points("8gaussians", n, g), seed)
    for _ in trainer.train_for(seconds):
        pass
    return trainer.step, last_frame(trainer.sample_iter(2000, "ddpm", 100, torch.Generator().manual_seed(seed))).x_t


def via_server(url: str) -> Callable[[float, int], tuple[int, torch.Tensor]]:
    import httpx

    from app.local_server import sse_events

    def run(seconds: float, seed: int) -> tuple[int, torch.Tensor]:
        body = {"dataset": "8gaussians", "seconds": seconds, "n": 2000, "sampler": "ddpm", "steps": 100, "seed": seed}
        job = httpx.post(url + "/api/v1/toy/jobs", json=body).json()["id"]
        with httpx.stream("GET", f"{url}/api/v1/jobs/{job}/events", timeout=600) as r:
            done = next(e for e in sse_events(r) if e.event == "toy_done").data
        return done["steps"], torch.tensor(done["points"])

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", nargs="+", type=float, default=[2, 5, 10, 20])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--via-server", action="store_true", help="train through the server's playground jobs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        train = in_process
        if args.via_server:
            from app.local_server import start_server
            from engine import DEFAULT_MODEL

            server = start_server(DEFAULT_MODEL, Path(tmp) / "server.log", threads=None)
            train = via_server(server.url)
        try:
            print("| training seconds | steps | within 0.5 of a mode | smallest mode | largest mode |")
            print("|---|---|---|---|---|")
            for secs in args.seconds:
                steps, x = train(secs, args.seed)
                cov, shares = mode_coverage(x)
                print(f"| {secs:g} | {steps} | {100 * cov:.1f} % | {100 * min(shares):.1f} % | "
                      f"{100 * max(shares):.1f} % |", flush=True)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
