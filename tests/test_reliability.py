"""The reliability suite: training faults, API fuzzing, hostile uploads, an SSE storm and SIGTERM.

Everything runs for real: `python -m engine train` subprocesses killed with SIGKILL, a uvicorn
subprocess on 127.0.0.1 read by real HTTP/SSE clients, and kernel-refused writes. The figures each
test measures are printed (see them with `pytest -s`) and, when DDPM_RELIABILITY_FIGURES names a
file, written there as JSON for the table in docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from engine.training.config import preset_train_config
from engine.training.state import CheckpointError, latest_checkpoint, load_checkpoint
from engine.training.trainer import Trainer
from tests.server_utils import ROOT, Server, metric, proc_status, sse_events, start_server, tiny_model_file

API = "/api/v1"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _record_figures() -> Iterator[None]:
    yield
    out = os.environ.get("DDPM_RELIABILITY_FIGURES")
    if out and FIGURES:
        Path(out).write_text(json.dumps(FIGURES, indent=2) + "\n")


def _figure(name: str, **values: Any) -> None:
    FIGURES[name] = values
    print(f"\nFIGURES {name}: {json.dumps(values)}")


# ====================================================================================== training faults
# --max-steps is out of reach of ten short lives on any machine; the last resume sets the real end.
TRAIN = ["--preset", "tiny", "--max-steps", "100000", "--ckpt-every", "1", "--keep-last", "2", "--sample-every", "0"]


def _train(run: Path, *args: str, log: Path, **popen: Any) -> subprocess.Popen:
    with open(log, "a") as out:  # tqdm writes to stderr: a file never fills up and blocks the trainer
        return subprocess.Popen([sys.executable, "-m", "engine", "train", "--run-dir", str(run), *args], env=ENV,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, **popen)


def _step_of(ckpt: Path | None) -> int:
    return -1 if ckpt is None else int(ckpt.name.removeprefix("step_"))


def _temps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob(".*"))


def _assert_latest_sound(run: Path) -> Path:
    """`latest` names a whole checkpoint, and the newest checkpoint loads with the step it claims."""
    root = run / "checkpoints"
    pointer = root / "latest"
    if pointer.exists():  # absent only when the kill came before the first pointer write
        text = pointer.read_text()
        assert re.fullmatch(r"step_\d{7}\n", text), f"latest is corrupt: {text!r}"
        named = root / text.strip()
        assert (named / "model.safetensors").exists() and (named / "state.pt").exists(), f"latest names {named}"
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    model, ema, state = load_checkpoint(ckpt)
    assert int(state["step"]) == _step_of(ckpt)
    assert ema is not None and ema.keys() == model.keys()
    assert all(torch.isfinite(v).all() for v in [*model.values(), *ema.values()])
    return ckpt


def _weights(run: Path) -> dict[str, torch.Tensor]:
    model, ema, _ = load_checkpoint(latest_checkpoint(run))
    return {**model, **{f"ema.{k}": v for k, v in (ema or {}).items()}}


def _kill_once(run: Path, args: list[str], delay: float, log: Path) -> tuple[int, bool]:
    """Start training, wait for a fresh checkpoint, SIGKILL `delay` s later: (step killed at, mid-save?)."""
    before = _step_of(latest_checkpoint(run))
    proc = _train(run, *args, log=log)
    deadline = time.monotonic() + 120
    while _step_of(latest_checkpoint(run)) <= before:
        assert proc.poll() is None, f"training exited on its own: {log.read_text()[-1500:]}"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.02)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    return _step_of(latest_checkpoint(run)), bool(_temps(run))


@pytest.mark.slow
def test_sigkill_at_random_moments_always_resumes(tmp_path):
    """Ten SIGKILLs at random moments (a checkpoint every step, so many land mid-save): `latest` stays
    sound after each, every run resumes, and the end result equals an uninterrupted run's."""
    t0 = time.monotonic()
    rng = random.Random(8)
    run, kills = tmp_path / "run", []
    for trial in range(10):
        kills.append(_kill_once(run, TRAIN if trial == 0 else ["--resume"], rng.uniform(0.0, 0.3),
                                tmp_path / "run.log"))
        _assert_latest_sound(run)
    # The schedule does not depend on --max-steps, so a run told to stop at `end` is the reference.
    end = str(_step_of(latest_checkpoint(run)) + 5)
    reference = _train(tmp_path / "ref", *TRAIN, "--max-steps", end, log=tmp_path / "ref.log")
    final = _train(run, "--resume", "--max-steps", end, log=tmp_path / "run.log")
    assert final.wait(240) == 0, (tmp_path / "run.log").read_text()[-2000:]
    assert reference.wait(240) == 0, (tmp_path / "ref.log").read_text()[-2000:]
    assert _step_of(_assert_latest_sound(run)) == int(end)
    assert _temps(run) == [], "temp files of killed saves were never cleaned up"
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=f"{k} differs after {len(kills)} kills")
    _figure("sigkill", trials=len(kills), killed_at_steps=[s for s, _ in kills], final_step=int(end),
            kills_mid_save=sum(mid for _, mid in kills), seconds=round(time.monotonic() - t0, 1))


def _first_run(run: Path, log: Path) -> None:
    proc = _train(run, "--preset", "tiny", "--max-steps", "5", "--ckpt-every", "5", "--sample-every", "0", log=log)
    assert proc.wait(240) == 0, log.read_text()[-2000:]


def _resume_expecting_failure(run: Path, log: Path, **popen: Any) -> str:
    """Resume to step 10 (the save at 10 must fail); the one-line error the CLI printed."""
    proc = _train(run, "--resume", "--max-steps", "10", log=log, **popen)
    assert proc.wait(240) == 2, log.read_text()[-2000:]
    text = log.read_text()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text[-2000:]
    return errors[0]


def _assert_step5_intact(run: Path) -> None:
    assert _assert_latest_sound(run).name == "step_0000005"
    assert (run / "checkpoints" / "latest").read_text() == "step_0000005\n"
    assert _temps(run) == []


def _limit_file_size() -> None:
    # The kernel then refuses any write past 64 KiB (EFBIG) as it refuses one to a full disk (ENOSPC);
    # a real full disk needs a mount this test may not make. SIGXFSZ would kill instead of failing the write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_kernel_refused_write_during_save_is_a_clear_error(tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    _first_run(run, log)
    line = _resume_expecting_failure(run, log, preexec_fn=_limit_file_size)
    assert "could not save checkpoint step_0000010" in line and "File too large" in line
    assert "the last good checkpoint, step_0000005, is intact" in line
    _assert_step5_intact(run)
    _figure("disk_full", message=line)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make `path` unwritable for real: chmod for a normal user; root ignores modes, so chattr +i."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no way to make a directory read-only for real "
                    "(test_no_space_left_in_process covers the message)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_checkpoint_dir_is_a_clear_error(tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    _first_run(run, log)
    with _read_only(run / "checkpoints"):
        line = _resume_expecting_failure(run, log)
    assert "could not save checkpoint step_0000010" in line
    assert "Permission denied" in line or "Operation not permitted" in line
    assert "the last good checkpoint, step_0000005, is intact" in line
    _assert_step5_intact(run)
    _figure("read_only", message=line)


def test_no_space_left_in_process(tmp_path, monkeypatch):
    """ENOSPC itself, injected into the tensor writer (a real full disk needs privileges to create)."""
    import engine.training.state as ts

    real = ts.save_file

    def fill_disk_at_step_10(tensors: dict, path: Path, *a: Any) -> None:
        if "step_0000010" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(tensors, path, *a)

    monkeypatch.setattr(ts, "save_file", fill_disk_at_step_10)
    cfg = preset_train_config("tiny", max_steps=10, ckpt_every=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from two threads, and loses 20× when the cores are busy
    try:
        with pytest.raises(CheckpointError, match=r"step_0000010 .*No space left on device.*step_0000005, is intact"):
            Trainer(cfg, tmp_path, progress=False).run()
    finally:
        torch.set_num_threads(threads)
    _assert_step5_intact(tmp_path)


# ====================================================================================== servers
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture(scope="module")
def short_model_file(tmp_path_factory) -> Path:
    # T=100 keeps any valid request the fuzzer invents to at most 100 steps.
    return tiny_model_file(tmp_path_factory.mktemp("m") / "tiny100.safetensors", T=100)


@pytest.fixture
def server(model_file, tmp_path) -> Iterator[Server]:
    s = start_server(model_file, tmp_path / "server.log", "--max-batch", "64", "--max-active-jobs", "64")
    yield s
    s.stop()


# ====================================================================================== API fuzzing
def _fuzz(op: Any, mode: Any, base_url: str, failures: list[str], codes: Counter[int]) -> int:
    """Run 30 derandomized examples of one operation in one mode; the number actually sent."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import checks

    wanted = [checks.not_a_server_error, checks.response_schema_conformance]
    sent = 0

    @settings(max_examples=30, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=op.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=base_url, timeout=60)
        codes[response.status_code] += 1
        try:
            case.validate_response(response, checks=wanted)
        except Exception as e:  # collect every failure, not just the first
            failures.append(f"{op.label} ({mode.value}): {e}"[:1500])

    with contextlib.suppress(Unsatisfiable):  # no negative input exists, e.g. for GET /model
        call()
    return sent


def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(short_model_file, tmp_path):
    """Every operation of the live OpenAPI, positive and negative inputs, 30 examples each, fixed seed.

    Nothing is excluded: the SSE routes are fuzzed too (a valid /stream request runs a job of at most
    100 steps to its end, so each call is bounded); their 200 body is text/event-stream, which has no
    JSON schema to conform to, while their 4xx bodies are checked like any other.
    """
    import schemathesis

    s = start_server(short_model_file, tmp_path / "server.log", "--max-batch", "16")
    try:
        schema = schemathesis.openapi.from_url(s.url + "/openapi.json")
        failures: list[str] = []
        codes: Counter[int] = Counter()
        ops = examples = 0
        for result in schema.get_all_operations():
            ops += 1
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                examples += _fuzz(result.ok(), mode, s.url, failures, codes)
        assert not failures, "\n\n".join(failures[:10])
        assert ops >= 10 and not any(c >= 500 for c in codes)
        assert "Traceback" not in s.log.read_text()
    finally:
        s.stop()
    _figure("schemathesis", operations=ops, examples=examples, status_codes=dict(sorted(codes.items())))


# ====================================================================================== uploads
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height but whose data is a few bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


def _noisy_png() -> bytes:
    """64×64 of noise: it does not compress, so cutting the file in half cuts into the pixel data."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _chunked_multipart(size: int) -> tuple[dict[str, str], Iterator[bytes]]:
    """A multipart upload of `size` bytes sent without Content-Length, so only the route can stop it."""
    boundary = "reliability-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\n10\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // (1 << 20)):
            yield b"\0" * (1 << 20)
        yield f"\r\n--{boundary}--\r\n".encode()

    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body()


HUGE = 64 * 1024 * 1024
BAD_UPLOADS: dict[str, set[int]] = {  # what each hostile upload must get
    "not_an_image": {415}, "truncated_png": {422}, "bomb_100k_x_100k": {413}, "huge_bytes": {413},
    "huge_bytes_chunked": {413},
}


def _upload(url: str, kind: str) -> httpx.Response:
    if kind == "huge_bytes_chunked":
        headers, body = _chunked_multipart(12 * 1024 * 1024)
        return httpx.post(url + API + "/noise", content=body, headers=headers, timeout=60)
    payload = {"not_an_image": lambda: b"MZ\x90\x00 this is an executable, not a picture" * 20,
               "truncated_png": lambda: _noisy_png()[: len(_noisy_png()) // 2],
               "bomb_100k_x_100k": lambda: _png_header(100_000, 100_000),
               "huge_bytes": lambda: b"\0" * HUGE}[kind]()
    return httpx.post(url + API + "/noise", files={"image": ("x.png", payload, "image/png")}, data={"t": "10"},
                      timeout=60)


def test_hostile_uploads_get_4xx_and_memory_stays_steady(server):
    pid = server.proc.pid
    ok = httpx.post(server.url + API + "/noise", files={"image": ("x.png", _noisy_png(), "image/png")},
                    data={"t": "10"}, timeout=60)
    assert ok.status_code == 200
    for kind in BAD_UPLOADS:  # one of each first, so that lazy imports and buffers count in the baseline
        _upload(server.url, kind)
    base = proc_status(pid)
    seen: dict[str, list[int]] = {}
    for _ in range(5):
        for kind, codes in BAD_UPLOADS.items():
            r = _upload(server.url, kind)
            seen.setdefault(kind, []).append(r.status_code)
            assert r.status_code in codes, (kind, r.status_code, r.text[:300])
            assert "image" in r.text, f"{kind}: the message does not name the field: {r.text[:300]}"
    after = proc_status(pid)
    grew_mb, peak_mb = (after["VmRSS"] - base["VmRSS"]) / 1024, (after["VmHWM"] - base["VmHWM"]) / 1024
    # A decoded 100k×100k image would be 10 GB and a buffered huge upload 64 MB: neither may happen.
    assert grew_mb < 25 and peak_mb < 25, (grew_mb, peak_mb)
    assert "Traceback" not in server.log.read_text()
    _figure("uploads", status={k: sorted(set(v)) for k, v in seen.items()}, rounds=5,
            rss_baseline_mb=round(base["VmRSS"] / 1024, 1), rss_after_mb=round(after["VmRSS"] / 1024, 1),
            peak_growth_mb=round(peak_mb, 1))


# ====================================================================================== load
@dataclass
class Client:
    """One SSE client of the storm; `role` is what it does to its job."""

    i: int
    role: str  # stay | reconnect | cancel
    steps: int
    frame_every: int
    job: str = ""
    frame_steps: list[int] = field(default_factory=list)
    last_event: str = ""
    reconnects: int = 0
    cancel_lag: int | None = None  # steps the job took after DELETE answered
    codes: list[int] = field(default_factory=list)


async def _read(http: httpx.AsyncClient, c: Client, last_id: str | None, stop_after: int | None) -> str | None:
    """Stream the job's events; hang up after `stop_after` frames. Returns the last SSE id seen."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    async with http.stream("GET", f"{API}/jobs/{c.job}/events", headers=headers) as r:
        c.codes.append(r.status_code)
        event, eid, data, frames = "message", None, "", 0
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                eid = line[3:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and data:
                c.last_event, last_id = event, eid or last_id
                if event == "frame":
                    c.frame_steps.append(json.loads(data)["step"])
                    frames += 1
                    if stop_after is not None and frames >= stop_after:
                        return last_id  # leaving the `async with` drops the connection mid-stream
                event, eid, data = "message", None, ""
    return last_id


async def _client(http: httpx.AsyncClient, c: Client, rng: random.Random) -> None:
    r = await http.post(f"{API}/jobs", json={"n": 1 + c.i % 2, "steps": c.steps, "sampler": "ddim", "seed": c.i,
                                             "frame_every": c.frame_every})
    c.codes.append(r.status_code)
    c.job = r.json()["id"]
    if c.role == "stay":
        await _read(http, c, None, None)
    elif c.role == "reconnect":
        last = None
        for _ in range(rng.randint(1, 3)):
            last = await _read(http, c, last, rng.randint(1, 4))
            if c.last_event == "done":  # the job outran this client's hang-ups
                return
            c.reconnects += 1
            await asyncio.sleep(rng.uniform(0.05, 0.8))
        await _read(http, c, last, None)
    else:
        await _read(http, c, None, rng.randint(1, 4))
        d = await http.delete(f"{API}/jobs/{c.job}")
        c.codes.append(d.status_code)
        at_delete = d.json()["step"]
        for _ in range(200):
            state = (await http.get(f"{API}/jobs/{c.job}")).json()
            if state["state"] != "running":
                break
            await asyncio.sleep(0.05)
        assert state["state"] == "cancelled", state
        c.cancel_lag = state["step"] - at_delete


async def _storm(url: str, n: int, seed: int, pid: int, seconds: float) -> tuple[list[Client], float, int]:
    """`n` concurrent clients, each starting job after job until `seconds` have passed."""
    sessions: list[Client] = []
    peak = 0
    end = time.monotonic() + seconds

    async def watch_rss() -> None:
        nonlocal peak
        while time.monotonic() < end + 60:
            peak = max(peak, proc_status(pid)["VmRSS"])
            await asyncio.sleep(0.2)

    async def one_client(k: int, http: httpx.AsyncClient) -> None:
        crng = random.Random(seed * 1000 + k)
        while time.monotonic() < end:
            role = crng.choices(["stay", "reconnect", "cancel"], weights=[5, 3, 2])[0]
            c = Client(len(sessions), role, 400 if role == "cancel" else crng.choice([40, 60, 80]),
                       crng.randint(1, 3))
            sessions.append(c)
            await _client(http, c, crng)

    limits = httpx.Limits(max_connections=4 * n)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        t0 = time.monotonic()
        watcher = asyncio.create_task(watch_rss())
        await asyncio.wait_for(asyncio.gather(*(one_client(k, http) for k in range(n))), timeout=seconds + 120)
        elapsed = time.monotonic() - t0
        watcher.cancel()
    return sessions, elapsed, peak


def _settle(s: Server) -> dict[str, int]:
    """Wait for the batch and the streams to empty and finished jobs to expire; then threads, fds, memory."""
    deadline = time.monotonic() + 30
    while metric(s.url, "ddpm_active_jobs") or metric(s.url, "ddpm_sse_clients"):
        assert time.monotonic() < deadline, "jobs or streams never ended"
        time.sleep(0.2)
    time.sleep(STORM_TTL_S + 0.5)
    r = httpx.post(s.url + API + "/jobs", json={"n": 1, "steps": 1})  # a submit forgets expired jobs
    assert r.status_code == 202
    time.sleep(1.0)  # let that job and the last sockets finish
    return proc_status(s.proc.pid)


ANYIO_IDLE_S = 10  # anyio to_thread workers idle this long are stopped at the pool's next call
# Finished jobs (kept for Last-Event-ID replays) are forgotten this long after they finished or their last reader
# left: a storm client's pause before it reconnects is at most 0.8 s. Both storms keep about as many finished jobs
# at once, so their heaps peak alike and the memory check compares like with like.
STORM_TTL_S = 3


def test_sse_storm_50_clients_with_disconnects_and_reconnects(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_JOB_TTL_S", str(STORM_TTL_S))  # so memory can be compared once jobs expire
    server = start_server(model_file, tmp_path / "server.log", "--max-batch", "64", "--max-active-jobs", "64")
    try:
        _sse_storm(server)
    finally:
        server.stop()


def _sse_storm(server: Server) -> None:
    pid = server.proc.pid
    idle = proc_status(pid)
    # A first, shorter storm fills the pools (anyio's 40 worker threads, allocator arenas) that then stay
    # for reuse: what the second storm must not do is grow them further.
    asyncio.run(_storm(server.url, 50, seed=1, pid=pid, seconds=6))
    base = _settle(server)
    clients, elapsed, peak = asyncio.run(_storm(server.url, 50, seed=2, pid=pid, seconds=20))
    after = _settle(server)
    # anyio stops a pool thread once it has been idle 10 s, but only when the next call into the pool
    # comes (a sync route such as /healthz). If this storm peaked higher than the first, its extra
    # threads stay until then, so keep calling; a leaked thread never exits.
    deadline = time.monotonic() + ANYIO_IDLE_S + 4
    while after["Threads"] > base["Threads"] + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
        httpx.get(server.url + "/healthz")
        after = proc_status(pid)

    codes = Counter(code for c in clients for code in c.codes)
    assert not [code for code in codes if code >= 500], codes
    stayed = [c for c in clients if c.role != "cancel"]
    for c in stayed:  # every client that stayed, or came back, saw its job to the end, in order, once
        assert c.last_event == "done" and c.frame_steps[-1] == c.steps, (c.role, c.last_event, c.frame_steps[-3:])
        assert c.frame_steps == sorted(set(c.frame_steps)), f"replayed or out-of-order frames: {c.frame_steps}"
    lags = [c.cancel_lag for c in clients if c.role == "cancel"]
    assert all(lag is not None and lag <= 1 for lag in lags), f"a cancelled job stayed in the batch: {lags}"
    assert metric(server.url, "ddpm_sse_clients") == 0, "an SSE stream task outlived its client"
    assert after["Threads"] <= base["Threads"] + 1 and after["Threads"] <= idle["Threads"] + 40 + 2, (base, after)
    assert after["fds"] <= base["fds"] + 2, (base, after)
    grew_mb = (after["VmRSS"] - base["VmRSS"]) / 1024
    assert grew_mb < 25, f"RSS grew {grew_mb:.1f} MB over the storm"
    assert "Traceback" not in server.log.read_text()
    _figure("sse_storm", concurrent_clients=50, sessions=len(clients), stayed=sum(c.role == "stay" for c in clients),
            reconnected=sum(c.role == "reconnect" for c in clients), cancelled=len(lags),
            reconnects=sum(c.reconnects for c in clients), final_frames=f"{sum(c.last_event == 'done' for c in stayed)}"
            f"/{len(stayed)}", max_cancel_lag_steps=max(lags), frames=sum(len(c.frame_steps) for c in clients),
            seconds=round(elapsed, 1), status_codes=dict(codes), rss_baseline_mb=round(base["VmRSS"] / 1024, 1),
            rss_peak_mb=round(peak / 1024, 1), rss_after_mb=round(after["VmRSS"] / 1024, 1),
            threads_idle=idle["Threads"], threads_before=base["Threads"], threads_after=after["Threads"],
            fds_before=base["fds"],
            fds_after=after["fds"])


# ====================================================================================== graceful shutdown
def test_sigterm_ends_every_live_stream_promptly(model_file, tmp_path):
    s = start_server(model_file, tmp_path / "server.log")
    n, results = 10, {}
    streaming = threading.Barrier(n + 1, timeout=60)

    def client(i: int) -> None:
        last = "nothing"
        try:
            if i % 2:  # half through /stream, half through /jobs/{id}/events
                job = httpx.post(s.url + API + "/jobs", json=dict(n=1, steps=1000, sampler="ddpm", seed=i)).json()
                req = ("GET", f"{s.url}{API}/jobs/{job['id']}/events", {})
            else:
                req = ("GET", s.url + API + "/stream", dict(n=1, steps=1000, sampler="ddpm", seed=i, frame_every=5))
            with httpx.stream(req[0], req[1], params=req[2], timeout=30) as r:
                waiting = True
                for e in sse_events(r):
                    last = f"{e.event}: {e.data.get('message', '')}" if e.event == "error" else e.event
                    if waiting and e.event == "frame":
                        waiting = False
                        streaming.wait()
            results[i] = (last, time.monotonic())
        except httpx.HTTPError as e:
            results[i] = (f"{last} then {type(e).__name__}", time.monotonic())

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    try:
        for t in threads:
            t.start()
        streaming.wait()
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(15)  # uvicorn's grace is 5 s: anything near 15 is a hang
        exited = time.monotonic() - t0
        for t in threads:
            t.join(15)
    finally:
        s.stop()
    assert len(results) == n, "a client hung after the server went away"
    ends = {i: (last, t - t0) for i, (last, t) in results.items()}
    assert all(last == "error: the server is shutting down" for last, _ in ends.values()), ends
    assert max(dt for _, dt in ends.values()) < 5 and exited < 8, (ends, exited)
    _figure("sigterm", streams=n, error_events=n, last_stream_closed_s=round(max(dt for _, dt in ends.values()), 2),
            process_exited_s=round(exited, 2))
