"""The server's CPU threading: the sampling worker must be the only thread with an OpenMP team.

libgomp stops spin-waiting between parallel regions once it manages more threads than there are
cores, and every thread that has ever run a large torch op keeps its team until it exits. A second
team makes the worker's helpers sleep and wake on every op, hundreds of context switches per step,
which slows sampling. The signature is unmistakable in /proc, so these tests count context switches
rather than timing anything. The server is pinned to as many CPUs as it has threads: libgomp only stops spinning
when it manages more threads than it may use CPUs, so on a bigger host the bug would otherwise hide.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from engine import DEFAULT_MODEL

from .server_utils import Server, sse_events, start_server, tiny_model_file

THREADS = 2
STEPS = 20

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").exists() or len(os.sched_getaffinity(0)) < THREADS,
    reason=f"needs Linux /proc and at least {THREADS} usable cores")


def _voluntary_switches(pid: int) -> int:
    """Voluntary context switches summed over the process's live threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread exited while we looked
            continue
        total += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def _switches_per_step(s: Server, **params) -> float:
    """Run one job over SSE and return the server's voluntary context switches per step."""
    before = _voluntary_switches(s.proc.pid)
    with httpx.stream("GET", s.url + "/api/v1/stream", params=params, timeout=120) as r:
        events = [e.event for e in sse_events(r)]
    assert events[-1] == "done" and events.count("frame") == -(-params["steps"] // params["frame_every"])
    return (_voluntary_switches(s.proc.pid) - before) / params["steps"]


# With one team the helpers spin between regions; the few switches per step left are the event loop,
# the encoder and the SSE writes. A second team shows up as hundreds per step.
BOUND = 100


def test_worker_threads_do_not_sleep_and_wake_on_every_op(tmp_path):
    s = start_server(DEFAULT_MODEL, tmp_path / "server.log", threads=THREADS, cpus=THREADS)
    try:
        params = {"n": 16, "steps": STEPS, "sampler": "ddpm", "seed": 0, "frame_every": 1}
        _switches_per_step(s, **params)  # warm the path
        per_step = _switches_per_step(s, **params)
    finally:
        s.stop()
    assert per_step < BOUND, f"{per_step:.0f} voluntary context switches per step: an extra OpenMP team?"


def test_a_large_upload_and_its_denoise_leave_no_team_behind(tmp_path):
    """On a 192×192 model an image is 36,864 values, above torch's 32k-element grain: /noise's ops and
    repeating the noised image for a denoise job (n = 2) would each open a team wherever they ran."""
    s = start_server(tiny_model_file(tmp_path / "big.safetensors", image_size=192), tmp_path / "server.log",
                     threads=THREADS, cpus=THREADS)
    try:
        params = {"n": 2, "steps": 10, "sampler": "ddim", "seed": 0, "frame_every": 5}
        _switches_per_step(s, **params)
        png = io.BytesIO()
        Image.new("L", (192, 192), 128).save(png, "PNG")
        r = httpx.post(s.url + "/api/v1/noise", files={"image": ("a.png", png.getvalue(), "image/png")},
                       data={"t": "300"}, timeout=60)
        assert r.status_code == 200, r.text
        after_upload = _switches_per_step(s, **params)
        after_denoise = _switches_per_step(s, **params, init=r.json()["id"])
    finally:
        s.stop()
    assert after_upload < BOUND, f"{after_upload:.0f} voluntary context switches per step after an upload"
    assert after_denoise < BOUND, f"{after_denoise:.0f} voluntary context switches per step in a denoise job"


def test_a_playground_job_trains_on_the_worker_and_leaves_no_team_behind(tmp_path):
    """A playground job's optimiser is first built in the request's handler (see routes.post_toy_job) and its
    training runs on the worker's thread: neither may leave a second team for the sampling jobs after it."""
    s = start_server(DEFAULT_MODEL, tmp_path / "server.log", threads=THREADS, cpus=THREADS)
    try:
        params = {"n": 16, "steps": STEPS, "sampler": "ddpm", "seed": 0, "frame_every": 1}
        _switches_per_step(s, **params)
        job = httpx.post(s.url + "/api/v1/toy/jobs", json={"seconds": 1, "n": 4000}).json()["id"]
        with httpx.stream("GET", f"{s.url}/api/v1/jobs/{job}/events", timeout=120) as r:
            assert [e.event for e in sse_events(r)][-1] == "toy_done"
        per_step = _switches_per_step(s, **params)
    finally:
        s.stop()
    assert per_step < BOUND, f"{per_step:.0f} voluntary context switches per step after a playground job"
