"""The streaming server, against a real uvicorn on 127.0.0.1 read by a real streaming client."""

from __future__ import annotations

import base64
import io
import math
import re
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server_utils import ROOT, decode_png, sse_events, start_server, tiny_model_file

API = "/api/v1"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    s = start_server(model_file, tmp_path_factory.mktemp("log") / "server.log", "--max-batch", "32")
    yield s
    s.stop()


def _stream(url: str, **params) -> list:
    with httpx.stream("GET", url + API + "/stream", params=params, timeout=60) as r:
        assert r.status_code == 200, r.read()
        return list(sse_events(r))


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("steps,frame_every", [(7, 1), (10, 3), (5, 10)])
def test_events_in_order_with_expected_frames(server, steps, frame_every):
    evs = _stream(server.url, n=2, steps=steps, sampler="ddim", seed=3, frame_every=frame_every)
    kinds = [e.event for e in evs]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done"
    frames = [e for e in evs if e.event == "frame"]
    assert len(frames) == math.ceil(steps / frame_every)
    assert [f.data["step"] for f in frames] == sorted(f.data["step"] for f in frames)
    assert frames[-1].data["step"] == steps == frames[-1].data["of"]
    assert [int(f.id) for f in frames] == [f.data["step"] for f in frames]
    ts = [f.data["t"] for f in frames]
    assert ts == sorted(ts, reverse=True) and ts[-1] == 0
    for f in frames:
        assert decode_png(f.data["xt"]).shape == decode_png(f.data["x0"]).shape
    assert len(evs[-1].data["images"]) == 2 and evs[-1].data["seed"] == 3


def _raw(frame: dict, key: str) -> np.ndarray:
    pixels = np.frombuffer(base64.b64decode(frame[key]), np.uint8)
    return pixels.reshape(frame["height"], frame["width"], frame["channels"])


def test_raw_frames_are_the_png_frames_pixels(server):
    params = dict(n=3, steps=6, sampler="ddpm", seed=11, frame_every=2)
    png = [e.data for e in _stream(server.url, **params) if e.event == "frame"]
    raw = [e.data for e in _stream(server.url, **params, frame_format="raw") if e.event == "frame"]
    assert [f["step"] for f in raw] == [f["step"] for f in png] == [2, 4, 6]
    for p, r in zip(png, raw, strict=True):
        assert p["format"] == "png" and r["format"] == "raw" and r["channels"] == 1
        for key in ("xt", "x0"):
            assert np.array_equal(_raw(r, key)[..., 0], decode_png(p[key]))
            assert decode_png(p[key]).shape == (p["height"], p["width"])


def test_openapi_documents_each_event_payload(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    comps = spec["components"]["schemas"]
    sampling = {"queued", "started", "frame", "done", "cancelled", "error"}
    for route, names in (("/stream", sampling),
                         ("/jobs/{job_id}/events", sampling | {"toy_started", "toy_progress", "toy_done"})):
        events = spec["paths"][API + route]["get"]["responses"]["200"]["content"]["text/event-stream"]["x-events"]
        assert set(events) == names
        for ref in events.values():
            assert ref["$ref"].removeprefix("#/components/schemas/") in comps
    frame = comps["FrameEvent"]["properties"]
    assert {"step", "of", "t", "format", "width", "height", "channels", "xt", "x0"} <= set(frame)
    params = {p["name"]: p["schema"] for p in spec["paths"][API + "/stream"]["get"]["parameters"]}
    assert params["frame_format"]["enum"] == ["png", "raw"] and params["frame_format"]["default"] == "png"


def test_same_seed_same_images_everywhere(server, model_file, tmp_path):
    params = dict(n=3, steps=12, sampler="ddpm", seed=77)
    done = _stream(server.url, **params, frame_every=4)[-1]
    via_stream = np.stack([decode_png(u) for u in done.data["images"]])
    r = httpx.post(server.url + API + "/samples", json=params, timeout=60)
    assert r.status_code == 200
    via_samples = np.stack([decode_png(b) for b in r.json()["images"]])
    subprocess.run([sys.executable, "-m", "engine", "sample", "--model", str(model_file), "--n", "3", "--steps", "12",
                    "--sampler", "ddpm", "--seed", "77", "--out", str(tmp_path / "s.npz")], cwd=ROOT, check=True,
                   capture_output=True)
    via_cli = np.load(tmp_path / "s.npz")["images"][..., 0]
    assert via_stream.shape == via_samples.shape == via_cli.shape == (3, 8, 8)
    assert np.array_equal(via_stream, via_samples) and np.array_equal(via_stream, via_cli)
    png = httpx.post(server.url + API + "/samples", json=params, headers={"Accept": "image/png"}, timeout=60)
    assert png.headers["content-type"] == "image/png" and png.headers["x-seed"] == "77"
    Image.open(io.BytesIO(png.content)).verify()


def test_disconnect_cancels_the_job(server):
    with httpx.stream("GET", server.url + API + "/stream", params=dict(n=1, steps=1000, sampler="ddpm", seed=1),
                      timeout=60) as r:
        it = sse_events(r)
        job_id = next(e for e in it if e.event == "started").data["id"]
        next(e for e in it if e.event == "frame")
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.url}{API}/jobs/{job_id}").json()["state"] != "cancelled":
        assert time.monotonic() < deadline, "the job kept running after its client left"
        time.sleep(0.1)
    state = httpx.get(f"{server.url}{API}/jobs/{job_id}").json()
    assert state["step"] < 1000
    deadline = time.monotonic() + 10
    while _metric(server.url, "ddpm_active_jobs") != 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.1)


def test_last_event_id_replays_missed_events(server):
    job = httpx.post(server.url + API + "/jobs", json=dict(n=1, steps=8, seed=5, frame_every=1)).json()
    assert set(job) == {"id", "position"}
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}{API}/jobs/{job['id']}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with httpx.stream("GET", f"{server.url}{API}/jobs/{job['id']}/events", headers={"Last-Event-ID": "5"},
                      timeout=30) as r:
        evs = list(sse_events(r))
    assert [e.data["step"] for e in evs if e.event == "frame"] == [6, 7, 8]
    assert evs[-1].event == "done"
    with httpx.stream("GET", f"{server.url}{API}/jobs/{job['id']}/events", timeout=30) as r:
        full = list(sse_events(r))
    assert [e.data["step"] for e in full if e.event == "frame"] == list(range(1, 9))


def test_delete_cancels_only_that_job(server):
    a = httpx.post(server.url + API + "/jobs", json=dict(n=1, steps=1000, sampler="ddpm", seed=1)).json()["id"]
    b = httpx.post(server.url + API + "/jobs", json=dict(n=1, steps=30, seed=2)).json()["id"]
    r = httpx.delete(f"{server.url}{API}/jobs/{a}")
    assert r.status_code == 200
    with httpx.stream("GET", f"{server.url}{API}/jobs/{b}/events", timeout=60) as resp:
        assert list(sse_events(resp))[-1].event == "done"
    assert httpx.get(f"{server.url}{API}/jobs/{a}").json()["state"] == "cancelled"
    assert httpx.get(f"{server.url}{API}/jobs/nope").status_code == 404


def test_concurrent_streams_are_batched(server):
    before = _metric(server.url, "ddpm_batch_size_count") - _metric(server.url, 'ddpm_batch_size_bucket{le="1.0"}')
    results: list[list] = [None] * 8  # type: ignore[list-item]

    def run(i: int) -> None:
        results[i] = _stream(server.url, n=1, steps=40, sampler="ddim", seed=i, frame_every=10)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r and r[-1].event == "done" for r in results)
    after = _metric(server.url, "ddpm_batch_size_count") - _metric(server.url, 'ddpm_batch_size_bucket{le="1.0"}')
    assert after > before, "no UNet forward ever held more than one sample"


def test_full_queue_gets_429(model_file, tmp_path):
    s = start_server(model_file, tmp_path / "log", "--max-active-jobs", "1", "--max-queue", "1")
    try:
        body = dict(n=1, steps=1000, sampler="ddpm", seed=1)
        codes = [httpx.post(s.url + API + "/jobs", json=body).status_code for _ in range(2)]
        assert codes == [202, 202]
        r = httpx.post(s.url + API + "/jobs", json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    finally:
        s.stop()


@pytest.mark.parametrize("body,field", [
    ({"n": 0}, "n"), ({"n": 33}, "n"), ({"steps": 0}, "steps"), ({"steps": 1001}, "steps"),
    ({"sampler": "euler"}, "sampler"), ({"eta": 1.5}, "eta"), ({"seed": -1}, "seed"),
    ({"frame_every": 0}, "frame_every"), ({"bogus": 1}, "bogus"), ({"init": "nope"}, "init"),
    ({"n": "many"}, "n"),
])
def test_bad_job_requests_get_422_naming_the_field(server, body, field):
    r = httpx.post(server.url + API + "/jobs", json=body)
    assert r.status_code == 422
    assert any(field in [str(p) for p in d["loc"]] for d in r.json()["detail"]), r.json()


def test_bad_stream_query_gets_422(server):
    r = httpx.get(server.url + API + "/stream", params={"n": 0})
    assert r.status_code == 422


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 128).save(buf, "PNG")
    return buf.getvalue()


def test_noise_and_denoise_from_here(server):
    r = httpx.post(server.url + API + "/noise", files={"image": ("d.png", _png(20, 30), "image/png")},
                   data={"t": "300", "seed": "1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["t"] == 300 and 0 < out["alpha_bar"] < 1
    assert decode_png(out["xt"]).shape == (12, 12)  # an 8×8 image in a grid with a 2-pixel border
    evs = _stream(server.url, n=2, steps=10, seed=1, init=out["id"])
    frames = [e for e in evs if e.event == "frame"]
    assert frames[0].data["t"] == 300 and evs[-1].event == "done"
    r = httpx.post(server.url + API + "/jobs", json={"init": out["id"], "steps": 302})
    assert r.status_code == 422 and _loc_of_422(r) == ["body", "steps"]


@pytest.mark.parametrize("payload,codes", [
    (b"not an image at all", {415, 422}),
    (_png(4000, 4000)[:200], {413, 422}),  # a truncated PNG that declares 16M pixels
    (_png(64, 64)[:-30], {422}),  # truncated body
])
def test_bad_uploads_get_4xx(server, payload, codes):
    r = httpx.post(server.url + API + "/noise", files={"image": ("x.png", payload, "image/png")}, data={"t": "10"})
    assert r.status_code in codes, (r.status_code, r.text)


def test_upload_limits(server):
    r = httpx.post(server.url + API + "/noise", files={"image": ("x.png", b"0" * (9 * 1024 * 1024), "image/png")},
                   data={"t": "10"})
    assert r.status_code == 413
    r = httpx.post(server.url + API + "/noise", files={"image": ("x.png", _png(8, 8), "image/png")},
                   data={"t": "1000"})
    assert r.status_code == 422 and _loc_of_422(r) == ["body", "t"]
    assert "t must be < 1000" in r.json()["detail"][0]["msg"]  # the limit, from the model's T


def _loc_of_422(r: httpx.Response) -> list:
    """The field a 422 names: ``loc`` of its one error (FastAPI's shape, also for the app's own checks)."""
    detail = r.json()["detail"]
    assert len(detail) == 1, detail
    return detail[0]["loc"]


def test_model_schedule_health_metrics_docs(server, model_file):
    from safetensors.torch import load_file

    m = httpx.get(server.url + API + "/model").json()
    served = sum(v.numel() for v in load_file(model_file).values())  # the file holds the weights, nothing else
    assert m["parameters"] == served and m["T"] == 1000 and m["image_size"] == 8
    s = httpx.get(server.url + API + "/schedule").json()
    assert len(s["alpha_bars"]) == 1000 and set(s["compare"]) == {"linear", "cosine"}
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").json() == {"ready": True}
    text = httpx.get(server.url + "/metrics").text
    for name in ("ddpm_queue_depth", "ddpm_active_samples", "ddpm_batch_size", "ddpm_step_seconds",
                 "ddpm_frames_dropped_total"):
        assert name in text
    spec = httpx.get(server.url + "/openapi.json").json()
    assert spec["components"]["schemas"]["JobRequest"].get("examples")
    assert httpx.get(server.url + "/docs").status_code == 200


def test_frame_every_min_from_the_environment_caps_frames(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_FRAME_EVERY_MIN", "4")
    s = start_server(model_file, tmp_path / "log")
    try:
        evs = _stream(s.url, n=1, steps=10, sampler="ddim", seed=1, frame_every=1)
        assert [e.data["step"] for e in evs if e.event == "frame"] == [4, 8, 10]
    finally:
        s.stop()


def test_serve_with_a_missing_model_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--model", str(tmp_path / "nope.safetensors")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "nope.safetensors" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("body,field", [(dict(labels=3), "labels"), (dict(guidance=2.0), "guidance"),
                                        (dict(sampler="ddpm", eta=0.5), "eta"),
                                        (dict(sampler="dpmpp_2m", steps=1000), "steps")])
def test_fields_a_model_or_sampler_cannot_honour_are_refused(server, body, field):
    """An unconditional model takes no labels or guidance, and ddpm no eta: a 422 names the field, never silence."""
    r = httpx.post(server.url + API + "/samples", json=dict(n=1, **body), timeout=30)
    assert r.status_code == 422, r.text
    assert any(field in e["loc"] for e in r.json()["detail"]), r.text


def test_defaults_are_served_and_used(server):
    d = httpx.get(server.url + API + "/model").json()["defaults"]
    assert set(d) >= {"sampler", "steps", "spacing", "eta", "samplers"}
    job = httpx.post(server.url + API + "/jobs", json=dict(n=1), timeout=30).json()
    state = httpx.get(f"{server.url}{API}/jobs/{job['id']}").json()
    assert (state["sampler"], state["of"], state["spacing"]) == (d["sampler"], d["steps"], d["spacing"])
