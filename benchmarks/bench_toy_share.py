"""The playground's effect on sampling: the page's default job alone, and while a playground job trains, through
one real server; and what the playground job gets meanwhile.

    .venv/bin/python benchmarks/bench_toy_share.py [--repeats 5] [--share 0.25] [--model FILE]

One ``ddpm serve`` of the bundled model at torch's default threads (as ``make demo``), with ``toy_share`` as
given. The sampling job is the page's (16 images, the server's default sampler, a frame every step as raw
pixels, over ``/stream``). Runs alternate: alone, then beside a playground job (8gaussians, 60 s budget, its
events read by a client as the page does) that is cancelled after the run. Medians with every run; and the
playground job's training steps per wall second alone and while it shares the worker (from its state, GET
/jobs/{id}, before and after).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from app.local_server import sse_events, start_server, stream_seconds  # noqa: E402
from engine import DEFAULT_MODEL  # noqa: E402

JOB = {"n": 16, "seed": 0, "frame_every": 1, "frame_format": "raw"}
API = "/api/v1"


class Toy:
    """A playground job whose events a thread reads, as the page does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.id = httpx.post(url + API + "/toy/jobs", json={"seconds": 60}).json()["id"]
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with httpx.stream("GET", f"{self.url}{API}/jobs/{self.id}/events", timeout=120) as r:
            for ev in sse_events(r):
                if ev.event in ("toy_done", "cancelled", "error"):
                    return

    def step(self) -> tuple[float, int]:
        """(now, the training steps it has taken)."""
        return time.perf_counter(), httpx.get(f"{self.url}{API}/jobs/{self.id}").json()["step"]

    def stop(self) -> None:
        httpx.delete(f"{self.url}{API}/jobs/{self.id}")
        self.thread.join(30)


def rate(a: tuple[float, int], b: tuple[float, int]) -> float:
    return (b[1] - a[1]) / (b[0] - a[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--share", type=float, default=0.25, help="the server's toy_share")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = ap.parse_args()
    import os

    os.environ["DDPM_TOY_SHARE"] = str(args.share)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(args.model, Path(tmp) / "server.log", threads=None)
        try:
            url = server.url
            stream_seconds(url, {**JOB, "n": 1, "steps": 2, "sampler": "ddpm"})  # warm the server up
            alone, beside, toy_alone, toy_shared = [], [], [], []
            for _ in range(args.repeats):
                alone.append(stream_seconds(url, JOB))
                toy = Toy(url)
                time.sleep(1.0)  # past its start
                a = toy.step()
                time.sleep(2.0)  # the playground alone for a while: its own pace
                b = toy.step()
                beside.append(stream_seconds(url, JOB))
                c = toy.step()
                toy_alone.append(rate(a, b))
                toy_shared.append(rate(b, c))
                toy.stop()
        finally:
            server.stop()
    med = statistics.median
    print(json.dumps({
        "toy_share": args.share,
        "job_alone_s": [round(x, 2) for x in alone], "job_beside_toy_s": [round(x, 2) for x in beside],
        "median_ratio": round(med(beside) / med(alone), 3),
        "toy_steps_per_s_alone": [round(x) for x in toy_alone],
        "toy_steps_per_s_sharing": [round(x) for x in toy_shared],
        "toy_rate_ratio": round(med(toy_shared) / med(toy_alone), 3),
    }, indent=1))


if __name__ == "__main__":
    main()
