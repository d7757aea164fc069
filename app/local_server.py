"""A real server on loopback, for tests, benchmarks and scripts: ``ddpm serve`` in a subprocess on 127.0.0.1,
and a small reader of its server-sent events over httpx. Nothing here is mocked: the client speaks HTTP to a
real uvicorn, as a browser or an API client would.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_server(model: Path, log: Path, *extra: str, timeout: float = 60.0, threads: int | None = 1,
                 cpus: int | None = None, root: Path = ROOT) -> Server:
    """``threads`` sets OMP_NUM_THREADS (tests share two cores); ``None`` keeps torch's default, as `make demo`.
    ``cpus`` pins the server to that many of our CPUs (libgomp sizes its spin-waiting by the CPUs it may use).
    ``root`` serves the app from another checkout (benchmarks compare revisions)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "app.cli", "serve", "--model", str(model), "--port", str(port), "--log-level",
           "warning", *extra]
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus]))
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return Server(url, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not become ready: {log.read_text()[-2000:]}")


@dataclass
class SSE:
    event: str
    id: str | None
    data: dict


def sse_events(response: httpx.Response) -> Iterator[SSE]:
    """Parse a streaming text/event-stream response into events (comments/pings skipped)."""
    event, eid, data = "message", None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield SSE(event, eid, json.loads("\n".join(data)))
            event, eid, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "id":
                eid = value
            elif key == "data":
                data.append(value)


def stream_seconds(url: str, params: dict, timeout: float = 600) -> float:
    """Seconds from a ``/stream`` request to its ``done`` event, every event parsed on the way (benchmarks)."""
    t0 = time.perf_counter()
    with httpx.stream("GET", url + "/api/v1/stream", params=params, timeout=timeout) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{params}: {r.status_code} {r.read().decode()[:300]}")
        for ev in sse_events(r):
            if ev.event == "done":
                return time.perf_counter() - t0
            if ev.event in ("error", "cancelled"):
                raise RuntimeError(f"job ended with {ev.event}: {ev.data}")
    raise RuntimeError("stream closed without done")


def decode_png(s: str) -> np.ndarray:
    """A PNG given as a data URL or plain base64 → uint8 (H, W) or (H, W, C)."""
    b64 = s.split(",", 1)[1] if s.startswith("data:") else s
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
