"""A class-conditional model behind a real server: labels, guidance, defaults, and the same images everywhere."""

import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch

from engine import resolve_labels

from .server_utils import ROOT, decode_png, sse_events, start_server, tiny_model_file

API = "/api/v1"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("m") / "cond.safetensors", T=50, num_classes=10)


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    s = start_server(model_file, tmp_path_factory.mktemp("log") / "server.log")
    yield s
    s.stop()


def _images(server, **body) -> np.ndarray:
    r = httpx.post(server.url + API + "/samples", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return np.stack([decode_png(b) for b in r.json()["images"]])


def test_model_lists_classes_and_conditional_defaults(server):
    info = httpx.get(server.url + API + "/model").json()
    assert info["classes"] == list(range(10))
    assert info["defaults"]["labels"] == "any" and info["defaults"]["guidance"] == 3.0
    assert info["defaults"]["guidance_interval"] == [0, 27]  # the lower 55 % of T = 50's timesteps


def test_labels_and_guidance_match_the_cli(server, model_file, tmp_path):
    for label, guidance in (("7", 3.0), ("any", 2.0), ("none", 1.0)):
        body = dict(n=3, steps=6, sampler="dpmpp_2m", seed=5, labels=label if label in ("any", "none") else 7,
                    guidance=guidance)
        via_api = _images(server, **body)
        subprocess.run([sys.executable, "-m", "engine", "sample", "--model", str(model_file), "--n", "3", "--steps",
                        "6", "--sampler", "dpmpp_2m", "--seed", "5", "--label", label, "--guidance", str(guidance),
                        "--out", str(tmp_path / "s.npz")], cwd=ROOT, check=True, capture_output=True)
        assert np.array_equal(via_api, np.load(tmp_path / "s.npz")["images"][..., 0]), label


def test_a_guidance_grid_is_the_same_through_the_api_and_the_cli(server, model_file, tmp_path):
    body = dict(n=4, steps=5, sampler="ddim", seed=2, labels="each", guidance_grid=[0.0, 1.0, 3.0])
    via_api = _images(server, **body)
    assert via_api.shape[0] == 12
    subprocess.run([sys.executable, "-m", "engine", "sample", "--model", str(model_file), "--n", "4", "--steps", "5",
                    "--sampler", "ddim", "--seed", "2", "--label", "each", "--guidance-grid", "0,1,3",
                    "--out", str(tmp_path / "g.npz")], cwd=ROOT, check=True, capture_output=True)
    assert np.array_equal(via_api, np.load(tmp_path / "g.npz")["images"][..., 0])


def test_the_label_changes_the_image_and_guidance_the_strength(server):
    base = dict(n=2, steps=6, sampler="ddim", seed=1)
    a, b = _images(server, **base, labels=1, guidance=1.0), _images(server, **base, labels=2, guidance=1.0)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, _images(server, **base, labels=1, guidance=4.0))
    # one list entry per sample, null for "no label"
    mixed = _images(server, **base, labels=[1, None], guidance=1.0)
    assert np.array_equal(mixed[0], a[0])


@pytest.mark.parametrize("body,field", [(dict(labels=10), "labels"), (dict(labels=[1, 2, 3]), "labels"),
                                        (dict(labels="seven"), "labels"), (dict(guidance=-1), "guidance"),
                                        (dict(guidance=21), "guidance")])
def test_bad_labels_and_guidance_name_the_field(server, body, field):
    r = httpx.post(server.url + API + "/samples", json=dict(n=2, steps=3, **body), timeout=30)
    assert r.status_code == 422, r.text
    assert any(field in e["loc"] for e in r.json()["detail"]), r.text


@pytest.mark.parametrize("labels", [3, "any", "none"])
def test_stream_takes_a_label(server, labels):
    """A query string gives labels as a list (``?labels=any`` is ``["any"]``); one value is the scalar."""
    with httpx.stream("GET", server.url + API + "/stream", params=dict(n=2, steps=4, labels=labels, guidance=2.5,
                                                                       seed=4), timeout=30) as r:
        assert r.status_code == 200, r.read()
        started = next(e.data for e in sse_events(r) if e.event == "started")
    want = {3: [3, 3], "none": [None, None]}.get(labels)
    assert started["labels"] == (want or resolve_labels("any", 2, 10, torch.Generator().manual_seed(4)).tolist())
    r = httpx.get(server.url + API + "/stream", params=[("n", 2), ("steps", 2), ("labels", 1), ("labels", "x")])
    assert r.status_code == 422 and "labels" in r.text


def test_the_labels_drawn_are_reported_in_started_and_the_job(server):
    """"any" is drawn from the job's seed, as the engine draws it; `started` and GET /jobs/{id} say what was drawn."""

    expected = resolve_labels("any", 6, 10, torch.Generator().manual_seed(11)).tolist()
    for labels, want in (("any", expected), ([4, None, 4, None, 0, 9], [4, None, 4, None, 0, 9])):
        job = httpx.post(server.url + API + "/jobs", json=dict(n=6, steps=3, seed=11, labels=labels, guidance=1.5),
                         timeout=30).json()
        with httpx.stream("GET", f"{server.url}{API}/jobs/{job['id']}/events", timeout=60) as r:
            started = next(e.data for e in sse_events(r) if e.event == "started")
        assert (started["labels"], started["guidance"]) == (want, 1.5)
        state = httpx.get(f"{server.url}{API}/jobs/{job['id']}", timeout=30).json()
        assert (state["labels"], state["guidance"]) == (want, 1.5)


def test_an_unconditional_prior_answers_no_label_rows_in_the_server_and_the_cli(model_file, tmp_path):
    """`ddpm serve --uncond-model U`: labels "none" draw exactly U's images, guided ones equal the CLI's."""
    uncond = tiny_model_file(tmp_path / "u.safetensors", seed=1, T=50)
    s = start_server(model_file, tmp_path / "server.log", "--uncond-model", str(uncond))
    try:
        assert httpx.get(s.url + API + "/model").json()["unconditional_prior"] == "u.safetensors"
        # "none" against the unconditional file alone; 7 against the CLI with the same pair
        for label, cli in (("none", ["--model", str(uncond)]),
                           (7, ["--model", str(model_file), "--uncond-model", str(uncond), "--label", "7",
                                "--guidance", "2"])):
            via_api = _images(s, n=2, steps=5, sampler="ddim", seed=3, labels=label, guidance=2.0)
            subprocess.run([sys.executable, "-m", "engine", "sample", *cli, "--n", "2", "--steps", "5", "--sampler",
                            "ddim", "--seed", "3", "--out", str(tmp_path / "s.npz")], cwd=ROOT, check=True,
                           capture_output=True)
            assert np.array_equal(via_api, np.load(tmp_path / "s.npz")["images"][..., 0]), label
    finally:
        s.stop()
    r = subprocess.run([sys.executable, "-m", "engine", "sample", "--model", str(uncond), "--uncond-model",
                        str(uncond), "--n", "1", "--out", str(tmp_path / "x.png")], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "a prior only serves a class-conditional model" in r.stderr, r.stderr


def test_a_guidance_interval_guides_only_its_steps_and_an_empty_one_is_plain_conditional(server, model_file, tmp_path):
    base = dict(n=3, steps=6, sampler="dpmpp_2m", seed=11, labels=4, guidance=3.0)
    guided = _images(server, **base, guidance_interval=[0, 49])  # every step (tests/test_golden.py: today's pixels)
    plain = _images(server, **{**base, "guidance": 1.0})
    assert not np.array_equal(guided, plain)
    assert np.array_equal(_images(server, **base), _images(server, **base, guidance_interval=[0, 27]))  # the default
    # dpmpp_2m's 6 steps never visit t = 0, so [0, 0] guides none of them
    assert np.array_equal(_images(server, **base, guidance_interval=[0, 0]), plain)
    partial = _images(server, **base, guidance_interval=[25, 49])
    assert not np.array_equal(partial, guided) and not np.array_equal(partial, plain)
    # the stream takes it as two query values, and the CLI as T_LO,T_HI: the same images
    params = {**base, "guidance_interval": [25, 49]}
    with httpx.stream("GET", server.url + API + "/stream", params=params, timeout=60) as r:
        done = next(ev for ev in sse_events(r) if ev.event == "done")
    assert np.array_equal(np.stack([decode_png(p) for p in done.data["images"]]), partial)
    subprocess.run([sys.executable, "-m", "engine", "sample", "--model", str(model_file), "--n", "3", "--steps", "6",
                    "--sampler", "dpmpp_2m", "--seed", "11", "--label", "4", "--guidance", "3",
                    "--guidance-interval", "25,49", "--out", str(tmp_path / "gi.npz")], cwd=ROOT, check=True,
                   capture_output=True)
    assert np.array_equal(np.load(tmp_path / "gi.npz")["images"][..., 0], partial)
    for bad in ([30, 10], [0, 50], [1]):
        r = httpx.post(server.url + API + "/samples", json={**base, "guidance_interval": bad}, timeout=30)
        assert r.status_code == 422 and "guidance_interval" in r.json()["detail"][0]["loc"], (bad, r.text)


def test_an_operator_sets_the_default_guidance_interval(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_GUIDANCE_INTERVAL", "10,30")
    s = start_server(model_file, tmp_path / "server.log")
    try:
        assert httpx.get(s.url + API + "/model").json()["defaults"]["guidance_interval"] == [10, 30]
        base = dict(n=2, steps=6, sampler="dpmpp_2m", seed=4, labels=2, guidance=3.0)
        assert np.array_equal(_images(s, **base), _images(s, **base, guidance_interval=[10, 30]))
    finally:
        s.stop()
    monkeypatch.setenv("DDPM_GUIDANCE_INTERVAL", "10,60")  # beyond this model's T = 50
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--model", str(model_file), "--port", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "ddpm serve: error: DDPM_GUIDANCE_INTERVAL: guidance_interval must be two timesteps t_lo ≤ t_hi in [0, 49], "
        "got [10, 60]"], r.stderr
