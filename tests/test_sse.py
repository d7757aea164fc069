"""The wire format of a job's events: typed worker results → SSE ids, event names and payloads."""

from __future__ import annotations

import base64
import json
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from app.http import sse
from app.http.schemas import FrameEvent
from app.runtime.frames import FrameEncoder, Images, JobLog, encode
from app.runtime.results import Cancelled, Done, Failed, Frame, Queued, Started
from app.runtime.worker import Job
from engine import GaussianDiffusion, NoiseSchedule, SamplingSpec, make_grid, resolve, to_uint8_array
from tests.server_utils import ROOT, decode_png

K = 5
VR = (-1.0, 1.0)


@pytest.fixture(scope="module")
def encoder():
    e = FrameEncoder()
    yield e
    e.close()


def _job(encoder: FrameEncoder, frame_format: str = "png") -> Job:
    model = SimpleNamespace(diffusion=GaussianDiffusion(NoiseSchedule.linear(10)), num_classes=0,
                            sample_shape=(1, 6, 10), net=None)
    run = resolve(SamplingSpec(n=2, sampler="ddim", steps=K, seed=9), model)
    return Job(id="j1", run=run, frame_every=1, log=JobLog(frame_format, 8, encoder, VR))  # type: ignore[arg-type]


def _frame(step: int, channels: int = 1) -> Frame:
    g = torch.Generator().manual_seed(step)
    return Frame(step, K, 10 - 2 * step, torch.rand(2, channels, 6, 10, generator=g) * 2 - 1,
                 torch.rand(2, channels, 6, 10, generator=g) * 2 - 1)


def _wire(result, job: Job) -> tuple[str, str, dict]:
    ev = sse.to_sse(encode(result, job.log.format, VR), job)
    return ev.event, ev.id, json.loads(ev.data)


def test_each_result_maps_to_its_event_id_and_payload(encoder):
    job = _job(encoder)
    assert _wire(Queued(3), job) == ("queued", "0", {"id": "j1", "position": 3})
    assert _wire(Started(K, 2, 9), job) == ("started", "0", {"id": "j1", "steps": K, "n": 2, "seed": 9,
                                                             "labels": None, "guidance": None})
    assert _wire(Started(K, 2, 9, (7, None), 2.0), job)[2]["labels"] == [7, None]
    frame = _frame(2)
    name, eid, data = _wire(frame, job)
    assert (name, eid) == ("frame", "2")
    grid = make_grid(to_uint8_array(frame.x_t, VR))
    assert {k: data[k] for k in ("step", "of", "t", "format", "width", "height", "channels")} == {
        "step": 2, "of": K, "t": 6, "format": "png", "width": grid.shape[1], "height": grid.shape[0], "channels": 1}
    assert np.array_equal(decode_png(data["xt"]), grid[..., 0])
    name, eid, data = _wire(Done(frame.x_t, 9, 12.5, 3), job)
    assert (name, eid, data["seed"], data["elapsed_ms"]) == ("done", str(K + 1), 9, 12.5)
    u8 = to_uint8_array(frame.x_t, VR)
    assert np.array_equal(np.stack([decode_png(p) for p in data["images"]]), u8[..., 0])
    assert _wire(Cancelled(4), job) == ("cancelled", str(K + 1), {"step": 4})
    assert _wire(Failed("boom"), job) == ("error", str(K + 1), {"message": "boom"})


@pytest.mark.parametrize("channels", [1, 3])
def test_raw_frames_carry_the_grids_bytes_row_major(encoder, channels):
    f = _frame(1, channels)
    _, _, data = _wire(f, _job(encoder, "raw"))
    for key, x in (("xt", f.x_t), ("x0", f.x0)):
        pixels = make_grid(to_uint8_array(x, VR))
        assert data["format"] == "raw" and (data["height"], data["width"], data["channels"]) == pixels.shape
        raw = np.frombuffer(base64.b64decode(data[key]), np.uint8)
        assert np.array_equal(raw.reshape(data["height"], data["width"], data["channels"]), pixels)
    FrameEvent.model_validate(data)


def test_the_log_keeps_the_workers_order_and_last_event_id_replays_exactly_the_later_events(encoder):
    job = _job(encoder)
    for r in (Queued(1), Started(K, 2, 9), *(_frame(s) for s in range(1, K + 1)), Done(_frame(K).x_t, 9, 1.0, K)):
        job.log.put(r)
    deadline = time.monotonic() + 10
    while not job.log.closed and time.monotonic() < deadline:  # frames and images are encoded on its thread
        time.sleep(0.01)
    ids = lambda cursor: [sse.event_id(e.result, job) for e in job.log.since(cursor)]  # noqa: E731
    assert ids(0) == [0, 0, 1, 2, 3, 4, 5, K + 1]
    assert isinstance(job.log.final(), Images)
    assert ids(sse.cursor_after(job, 0)) == [1, 2, 3, 4, 5, K + 1]
    assert ids(sse.cursor_after(job, 3)) == [4, 5, K + 1]
    assert ids(sse.cursor_after(job, K + 1)) == []


def test_the_page_names_the_same_events_as_the_server():
    js = (ROOT / "static" / "events.js").read_text()
    block = re.search(r"EVENTS = Object\.freeze\(\{(.*?)\}\)", js, re.S).group(1)
    assert sorted(re.findall(r'"(\w+)"', block)) == sorted(name for name, _ in sse.EVENTS.values())
