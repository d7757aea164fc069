"""The playground's API on a real server: POST /toy/jobs, its events, its limits, and its share of the worker."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .server_utils import metric, sse_events, start_server, tiny_model_file

API = "/api/v1"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("toy") / "tiny.safetensors")


def _events(url: str, job: str, last_id: int | None = None) -> list:
    headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
    with httpx.stream("GET", f"{url}{API}/jobs/{job}/events", headers=headers, timeout=120) as r:
        assert r.status_code == 200
        return list(sse_events(r))


def _wait(url: str, job: str, want: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while (state := httpx.get(f"{url}{API}/jobs/{job}").json())["state"] != want:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return state


def test_a_toy_job_streams_progress_then_its_samples_trails_and_field(model_file, tmp_path):
    s = start_server(model_file, tmp_path / "server.log")
    try:
        r = httpx.post(s.url + API + "/toy/jobs", json={"dataset": "moons", "seconds": 2, "n": 300, "seed": 3,
                                                         "sampler": "ddim", "steps": 30})
        assert r.status_code == 202
        job = r.json()["id"]
        evs = _events(s.url, job)
        names = [e.event for e in evs]
        assert names[0] == "queued" and names[1] == "toy_started" and names[-1] == "toy_done", names
        progress = [e for e in evs if e.event == "toy_progress"]
        assert len(progress) >= 2 and names.count("toy_done") == 1
        steps = [e.data["step"] for e in progress]
        assert steps == sorted(steps) and [int(e.id) for e in progress] == steps  # ids are training steps
        assert all(len(e.data["points"]) == 500 for e in progress)
        assert len(evs[1].data["data"]) == 1000
        done = evs[-1].data
        assert int(evs[-1].id) == done["steps"] + 1 and done["steps"] > steps[-1] - 1
        assert done["seconds"] >= 2.0 and len(done["points"]) == 300
        assert len(done["sde"]) == len(done["ode"]) == 51 and len(done["sde"][0]) == 64
        assert done["sde"][0] == done["ode"][0]  # one x_T for both
        assert len(done["field"]) == len(done["field_t"]) == len(done["field_sigma"])
        assert len(done["field"][0]) == len(done["field"][0][0]) == 21
        assert done["field_sigma"] == sorted(done["field_sigma"]) and done["extent"] == 3.0
        assert done["losses"][-1][1] < done["losses"][0][1]  # it learned
        state = httpx.get(f"{s.url}{API}/jobs/{job}").json()
        assert (state["kind"], state["state"], state["step"]) == ("toy", "done", done["steps"])
        # a client that reconnects after the first progress event gets the rest, and no more
        replay = _events(s.url, job, last_id=steps[0])
        assert [e.event for e in replay][-1] == "toy_done"
        assert all(int(e.id) > steps[0] for e in replay)
    finally:
        s.stop()


def test_toy_requests_are_checked_and_share_the_client_limit(model_file, tmp_path):
    s = start_server(model_file, tmp_path / "server.log", "--max-jobs-per-client", "1")
    try:
        for body, loc in (({"seconds": 61}, ["seconds"]),
                          ({"dataset": "moons", "points": [[0, 0], [1, 1]]}, ["points"]),
                          ({"points": [[0, 0], [3.5, 0]]}, ["points", 1, 0]),
                          ({"points": [[0, 0]]}, ["points"]),
                          ({"sampler": "euler"}, ["sampler"]),
                          ({"sampler": "ode_rk45", "steps": 20}, ["steps"]),
                          ({"sampler": "pndm", "steps": 3}, ["steps"]),
                          ({"dataset": "spiral"}, ["dataset"]),
                          ({"n": 4001}, ["n"]),
                          ({"epochs": 3}, ["epochs"])):
            r = httpx.post(s.url + API + "/toy/jobs", json=body)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][1:] == loc, (body, r.text)
        # the most points, written at full precision, fit the body limit; and they are the job's
        many = [[-2.9999999999999996, -2.9999999999999996]] * 2000
        r = httpx.post(s.url + API + "/toy/jobs", json={"points": many, "seconds": 30})
        assert r.status_code == 202, r.text
        httpx.delete(f"{s.url}{API}/jobs/{r.json()['id']}")
        _wait(s.url, r.json()["id"], "cancelled")  # the client's one live job is over
        r = httpx.post(s.url + API + "/toy/jobs", json={"points": [*many, [0, 0]], "seconds": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "points"]
        drawn = [[0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]]
        r = httpx.post(s.url + API + "/toy/jobs", json={"points": drawn, "seconds": 30})
        assert r.status_code == 202
        job = r.json()["id"]
        # the client's one live job is the toy: a sample job, or another toy, is refused
        assert httpx.post(s.url + API + "/jobs", json={"n": 1, "steps": 2}).status_code == 429
        assert httpx.post(s.url + API + "/toy/jobs", json={}).status_code == 429
        with httpx.stream("GET", f"{s.url}{API}/jobs/{job}/events", timeout=60) as stream:
            evs = sse_events(stream)
            started = next(e for e in evs if e.event == "toy_started")
            assert {tuple(p) for p in started.data["data"]} <= {tuple(p) for p in drawn}  # trains on your points
            assert httpx.delete(f"{s.url}{API}/jobs/{job}").json()["kind"] == "toy"
            last = [e for e in evs][-1]
        assert last.event == "cancelled" and last.data["step"] > 0
        assert httpx.post(s.url + API + "/jobs", json={"n": 1, "steps": 2}).status_code == 202
    finally:
        s.stop()


def test_an_unread_toy_job_is_cancelled(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_TOY_ORPHAN_S", "1")
    s = start_server(model_file, tmp_path / "server.log")
    try:
        job = httpx.post(s.url + API + "/toy/jobs", json={"seconds": 60}).json()["id"]
        state = _wait(s.url, job, "cancelled", timeout=20)
        assert 0 < state["seconds"] < 60
    finally:
        s.stop()


@pytest.mark.parametrize("toy_job", [{"seconds": 60}, {"seconds": 0.2, "n": 4000, "steps": 1000}],
                         ids=["training", "final-sampling"])
def test_a_playground_job_keeps_to_its_share_of_the_worker_while_sampling_runs(model_file, tmp_path, monkeypatch,
                                                                              toy_job):
    """The worker's own accounts: while a sampling job is live, the playground gets at most toy_share of the
    worker's time (its seconds against the sampling ticks' seconds), whether it is training or drawing its final
    samples (4000 points × 1000 steps here); and neither job starves."""
    monkeypatch.setenv("DDPM_TOY_SHARE", "0.2")
    s = start_server(model_file, tmp_path / "server.log")
    try:
        toy = httpx.post(s.url + API + "/toy/jobs", json=toy_job).json()["id"]
        reader = threading.Thread(target=_events, args=(s.url, toy), daemon=True)
        reader.start()
        _wait(s.url, toy, "running")
        job = httpx.post(s.url + API + "/jobs", json={"n": 4, "sampler": "ddpm", "steps": 1000,
                                                       "frame_every": 1000}).json()["id"]

        def accounts(at_step: int) -> tuple[float, float]:
            deadline = time.monotonic() + 120
            while httpx.get(f"{s.url}{API}/jobs/{job}").json()["step"] < at_step:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            return metric(s.url, "ddpm_toy_seconds_total"), metric(s.url, "ddpm_step_seconds_sum")

        toy0, tick0 = accounts(100)
        toy1, tick1 = accounts(900)
        _wait(s.url, job, "done", timeout=120)
        trained, sampled = toy1 - toy0, tick1 - tick0
        # 0.2 / 0.8 of the ticks, plus the credit saved before the window (≤ one 0.05 s slice) and one overshoot
        assert 0 < trained <= 0.25 * sampled + 0.1, (trained, sampled)
        httpx.delete(f"{s.url}{API}/jobs/{toy}")
        reader.join(30)
    finally:
        s.stop()


def test_cancelling_playground_jobs_at_once_leaves_the_worker_serving(model_file, tmp_path):
    """DELETE right after POST, however far the worker got with the job (queued, starting, training, drawing its
    samples), ends it exactly once; places in the playground queue move up; sampling goes on."""
    s = start_server(model_file, tmp_path / "server.log")
    try:
        jobs = []
        for i in range(12):
            job = httpx.post(s.url + API + "/toy/jobs", json={"seconds": 0.01 * (i % 3 + 1), "n": 10}).json()["id"]
            httpx.delete(f"{s.url}{API}/jobs/{job}")
            jobs.append(job)
        for job in jobs:
            evs = _events(s.url, job)
            ends = [e.event for e in evs if e.event in ("toy_done", "cancelled", "error")]
            assert len(ends) == 1 and ends[0] != "error", [e.event for e in evs]
        # three waiting: cancelling the second moves the third up
        a, b, c = (httpx.post(s.url + API + "/toy/jobs", json={"seconds": 30}).json() for _ in range(3))
        assert (b["position"], c["position"]) == (1, 2)
        httpx.delete(f"{s.url}{API}/jobs/{b['id']}")
        assert httpx.get(f"{s.url}{API}/jobs/{c['id']}").json()["position"] == 1
        for job in (a["id"], c["id"]):
            httpx.delete(f"{s.url}{API}/jobs/{job}")
        with httpx.stream("GET", f"{s.url}{API}/jobs/{c['id']}/events", timeout=60) as r:
            queued = [e.data["position"] for e in sse_events(r) if e.event == "queued"]
        assert queued[:2] == [2, 1]
        assert httpx.get(s.url + "/readyz").status_code == 200
        r = httpx.post(s.url + API + "/samples", json={"n": 1, "steps": 3}, timeout=60)
        assert r.status_code == 200
    finally:
        s.stop()
