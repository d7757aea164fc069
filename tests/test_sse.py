"""The wire format of a job's events: typed worker results → SSE ids, event names and payloads."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from app.frames import EventLog
from app.results import Cancelled, Done, Failed, Frame, Queued, Started
from app.schemas import FrameEvent
from app.worker import Job

from app import sse
from engine import GaussianDiffusion, NoiseSchedule, SamplingPlan
from tests.server_utils import ROOT, decode_png

K = 5


def _job(frame_format: str = "png") -> Job:
    plan = SamplingPlan.build(GaussianDiffusion(NoiseSchedule.linear(10)), "ddim", K)
    return Job(id="j1", n=2, plan=plan, seed=9, frame_every=1, clip=True, frame_format=frame_format,  # type: ignore[arg-type]
               events=EventLog(8))


def _frame(step: int, channels: int = 1) -> Frame:
    rng = np.random.default_rng(step)
    return Frame(step, K, 10 - 2 * step, rng.integers(0, 256, (6, 10, channels), dtype=np.uint8),
                 rng.integers(0, 256, (6, 10, channels), dtype=np.uint8))


def _wire(result, job: Job) -> tuple[str, str, dict]:
    ev = sse.to_sse(result, job)
    return ev.event, ev.id, json.loads(ev.data)


def test_each_result_maps_to_its_event_id_and_payload():
    job = _job()
    assert _wire(Queued(3), job) == ("queued", "0", {"id": "j1", "position": 3})
    assert _wire(Started(K, 2, 9), job) == ("started", "0", {"id": "j1", "steps": K, "n": 2, "seed": 9,
                                                             "labels": None, "guidance": None})
    assert _wire(Started(K, 2, 9, (7, None), 2.0), job)[2]["labels"] == [7, None]
    name, eid, data = _wire(_frame(2), job)
    assert (name, eid) == ("frame", "2")
    assert {k: data[k] for k in ("step", "of", "t", "format", "width", "height", "channels")} == {
        "step": 2, "of": K, "t": 6, "format": "png", "width": 10, "height": 6, "channels": 1}
    assert np.array_equal(decode_png(data["xt"]), _frame(2).x_t[..., 0])
    png = b"\x89PNG fake"
    assert _wire(Done([png], png, 9, 12.5), job) == (
        "done", str(K + 1), {"images": ["data:image/png;base64," + base64.b64encode(png).decode()], "seed": 9,
                             "elapsed_ms": 12.5})
    assert _wire(Cancelled(4), job) == ("cancelled", str(K + 1), {"step": 4})
    assert _wire(Failed("boom"), job) == ("error", str(K + 1), {"message": "boom"})


@pytest.mark.parametrize("channels", [1, 3])
def test_raw_frames_carry_the_grids_bytes_row_major(channels):
    f = _frame(1, channels)
    _, _, data = _wire(f, _job("raw"))
    assert data["format"] == "raw" and (data["height"], data["width"], data["channels"]) == f.x_t.shape
    for key, pixels in (("xt", f.x_t), ("x0", f.x0)):
        raw = np.frombuffer(base64.b64decode(data[key]), np.uint8)
        assert np.array_equal(raw.reshape(data["height"], data["width"], data["channels"]), pixels)
    FrameEvent.model_validate(data)


def test_last_event_id_replays_exactly_the_later_events():
    job = _job()
    for r in (Queued(1), Started(K, 2, 9), *(_frame(s) for s in range(1, K + 1)), Done([], b"", 9, 1.0)):
        job.events.append(r)
    ids = lambda cursor: [sse.event_id(e.result, K) for e in job.events.since(cursor)]  # noqa: E731
    assert ids(sse.cursor_after(job, 0)) == [1, 2, 3, 4, 5, K + 1]
    assert ids(sse.cursor_after(job, 3)) == [4, 5, K + 1]
    assert ids(sse.cursor_after(job, K + 1)) == []


def test_the_page_names_the_same_events_as_the_server():
    js = (ROOT / "static" / "events.js").read_text()
    block = re.search(r"EVENTS = Object\.freeze\(\{(.*?)\}\)", js, re.S).group(1)
    assert sorted(re.findall(r'"(\w+)"', block)) == sorted(name for name, _ in sse.EVENTS.values())
