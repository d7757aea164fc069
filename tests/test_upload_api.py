"""The routes that work on an uploaded image, on the bundled default. POST /api/v1/likelihood: a held-out digit and
a scribble cost far fewer bits than noise, by the ODE and by the bound alike. POST /api/v1/invert: a digit's x_T,
which /samples decodes back (and redraws under another label). What is not an image is refused.

A scribble of strokes on black costs about as few bits as a digit (fewer, for the one here): likelihood
rewards large flat background, not digit-ness (Nalisnick et al. 2019), the lesson the page's noise panel shows."""

from __future__ import annotations

import io
import math

import httpx
import numpy as np
import pytest
from PIL import Image

from engine import DEFAULT_MODEL, load_dataset, to_uint8_array

from .server_utils import decode_png, sse_events, start_server

API = "/api/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(DEFAULT_MODEL, tmp_path_factory.mktemp("log") / "server.log", threads=2)
    yield s
    s.stop()


def _png(u8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")
    return buf.getvalue()


def _bits(server, png: bytes) -> dict:
    r = httpx.post(server.url + API + "/likelihood", files={"image": ("x.png", png, "image/png")}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_digit_and_a_scribble_cost_far_fewer_bits_than_noise(server):
    digit = to_uint8_array(load_dataset("mnist5k", "test").images[:1], (-1.0, 1.0))[0, ..., 0]
    scribble = np.zeros((28, 28), np.uint8)
    scribble[4:24, 6:9] = 255
    scribble[12:15, 6:22] = 255
    scribble[[5, 9, 17, 21], [20, 11, 15, 8]] = 255  # stray dots no digit has
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    got = [_bits(server, _png(u8)) for u8 in (digit, scribble, noise)]
    for g in got:
        assert all(math.isfinite(g[k]) for k in ("bpd_ode", "bpd_bound")) and g["ode_evaluations"] > 10
        assert g["x0"].startswith("data:image/png;base64,") and g["tolerance"] == 1e-4
    print({name: (round(g["bpd_ode"], 3), round(g["bpd_bound"], 3), g["ode_evaluations"])
           for name, g in zip(("digit", "scribble", "noise"), got, strict=True)})
    for route in ("bpd_ode", "bpd_bound"):
        assert max(got[0][route], got[1][route]) + 2 < got[2][route], route
    assert 0.5 < got[0]["bpd_ode"] < 3 and got[2]["bpd_ode"] > 5  # MNIST digits cost ~1–2 bits/dim


def test_what_is_not_an_image_is_refused(server):
    r = httpx.post(server.url + API + "/likelihood", files={"image": ("x.png", b"not a png", "image/png")})
    assert r.status_code == 415 and "image" in r.json()["detail"]


def _digit_png(k: int = 0) -> tuple[bytes, int]:
    test = load_dataset("mnist5k", "test")
    return _png(to_uint8_array(test.images[k : k + 1], (-1.0, 1.0))[0, ..., 0]), int(test.labels[k])


def test_invert_then_decode_the_x_T_through_samples(server):
    """The issue's target on a real digit (PSNR ≥ 20 dB at 50 steps); the id is an init that /samples decodes,
    unguided under the same label, to the round trip's own reconstruction."""
    png, label = _digit_png(7)
    r = httpx.post(server.url + API + "/invert", files={"image": ("d.png", png, "image/png")},
                   data={"steps": "50", "label": str(label)}, timeout=300)
    assert r.status_code == 200, r.text
    inv = r.json()
    assert inv["psnr"] >= 20 and inv["steps"] == 50
    body = {"n": 1, "init": inv["id"], "sampler": "ddim", "steps": 50, "labels": label, "guidance": 1.0,
            "guidance_interval": [0, 999]}
    again = httpx.post(server.url + API + "/samples", json=body, timeout=300).json()
    decoded = decode_png(again["images"][0]).astype(int)
    rec = decode_png(inv["reconstruction"]).astype(int)[2:-2, 2:-2]  # a one-image grid: a 2-pixel border
    assert decoded.shape == rec.shape and np.abs(decoded - rec).max() <= 1


@pytest.mark.parametrize("data,field", [({"label": "10"}, "label"), ({"steps": "1001"}, "steps"),
                                        ({"steps": "0"}, "steps")])
def test_invert_names_the_field_it_refuses(server, data, field):
    png, _ = _digit_png()
    r = httpx.post(server.url + API + "/invert", files={"image": ("d.png", png, "image/png")}, data=data)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field


def test_a_strip_from_your_inverted_digit_to_a_seeds_digit(server):
    """The inverted x_T as one end of a walk through noise space (inits): its end is the round trip's own
    reconstruction, decoded the same way; an id that is not an x_T, or an end with both a seed and an init,
    is named in a 422."""
    png, label = _digit_png(7)
    inv = httpx.post(server.url + API + "/invert", files={"image": ("d.png", png, "image/png")},
                     data={"steps": "20", "label": str(label)}, timeout=300).json()
    body = {"seeds": [None, 2], "inits": [inv["id"], None], "labels": [label, 8], "k": 5, "steps": 20,
            "guidance": 1.0, "guidance_interval": [0, 999]}
    r = httpx.post(server.url + API + "/interpolate", json=body)
    assert r.status_code == 202, r.text
    with httpx.stream("GET", f"{server.url}{API}/jobs/{r.json()['id']}/events", timeout=300) as stream:
        done = next(e for e in sse_events(stream) if e.event == "done").data
    first = decode_png(done["images"][0]).astype(int)
    rec = decode_png(inv["reconstruction"]).astype(int)[2:-2, 2:-2]
    assert first.shape == rec.shape and np.abs(first - rec).max() <= 1
    noised = httpx.post(server.url + API + "/noise", files={"image": ("d.png", png, "image/png")},
                        data={"t": "300"}).json()["id"]
    for bad, loc in (({"inits": [noised, None]}, "inits"), ({"inits": ["feedface", None]}, "inits"),
                     ({"seeds": [1, 2]}, "seeds"), ({"seeds": [None, None]}, "seeds")):
        r = httpx.post(server.url + API + "/interpolate", json={**body, **bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", loc], (bad, r.text)
