"""Hostile requests against a real server: each gets a 4xx that names the field and the limit, never a 5xx."""

from __future__ import annotations

import io
import select
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from .server_utils import Server, sse_events, start_server, tiny_model_file

API = "/api/v1"
UPLOAD_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    tmp = tmp_path_factory.mktemp("limits")
    mp = pytest.MonkeyPatch()
    mp.setenv("DDPM_MAX_UPLOAD_BYTES", str(UPLOAD_LIMIT))
    mp.setenv("DDPM_MAX_NOISE_UPLOADS", "1")
    try:
        s = start_server(tiny_model_file(tmp / "tiny.safetensors"), tmp / "server.log")
    finally:
        mp.undo()
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text()


@pytest.mark.parametrize("route", ["/jobs", "/samples"])
@pytest.mark.parametrize("body", ['{"eta": NaN}', '{"n": Infinity}', '{"seed": -Infinity}', '{"steps": 1e400}'])
def test_non_finite_json_numbers_are_a_422_naming_the_field(server, route, body):
    r = httpx.post(server.url + API + route, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    field = body.split('"')[1]
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", field]
    assert isinstance(err["input"], str)  # echoed as "nan"/"inf": JSON has no such numbers


@pytest.mark.parametrize("body, content_type", [(b"\xff\xfe", "text/plain"), (b"\xff\xfe", None),
                                                (b'{"n": {"\\ud800": 1}}', "application/json"),
                                                (b'"\\ud800"', "application/json")])
def test_undecodable_bodies_are_a_4xx_not_a_500(server, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(server.url + API + "/jobs", content=body, headers=headers)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def test_a_body_sent_to_an_sse_stream_past_the_limit_ends_it_without_a_traceback(server):
    """The SSE routes read the request while streaming (to notice a disconnect): too late for a 413."""
    job = httpx.post(server.url + API + "/jobs", json={"n": 1, "steps": 20}).json()

    def chunks():
        for _ in range(40):
            yield b"x" * 8192

    with httpx.stream("GET", f"{server.url}{API}/jobs/{job['id']}/events", content=chunks(), timeout=30) as r:
        assert r.status_code == 200
        assert list(sse_events(r))[-1].event == "done"  # the stream was not cut short
    log = server.log.read_text()
    assert "Traceback" not in log and "without completing response" not in log


def test_an_oversized_json_body_is_a_413_declared_or_chunked(server):
    big = b'{"n": 1, "init": "' + b"x" * (100 * 1024) + b'"}'
    r = httpx.post(server.url + API + "/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "65536 bytes" in r.json()["detail"], r.text

    def chunks():
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    r = httpx.post(server.url + API + "/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "65536 bytes" in r.json()["detail"], r.text


def test_a_chunked_upload_is_refused_at_the_limit_not_after_spooling_it(server):
    """Send an endless chunked upload by hand and count what was sent before the 413 came back.

    The count includes what the two kernels buffer (a few MB on loopback), hence the margin; a server
    that spooled the whole body first would not answer at all before the body ends, which this one never does."""
    host, port = server.url.removeprefix("http://").split(":")
    boundary = "b0undary"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall((f"POST {API}/noise HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode()
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        chunk = b"\0" * (256 * 1024)
        sent = 0
        while sent < 32 * UPLOAD_LIMIT and not select.select([sock], [], [], 0)[0]:  # until the server answers
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):  # it answered and hung up
                break
            sent += len(chunk)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # Loose: the server's receive buffer grows with load (up to tcp_rmem's max); 4.2–4.5 MB when measured idle.
    assert sent < 16 * UPLOAD_LIMIT, f"{sent} bytes were sent before a 413 for a {UPLOAD_LIMIT}-byte limit"



def test_invert_refuses_a_label_on_an_unconditional_model(server):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "PNG")
    r = httpx.post(server.url + API + "/invert", files={"image": ("x.png", buf.getvalue(), "image/png")},
                   data={"label": "0", "steps": "2"})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "label: this model is unconditional"


@pytest.mark.parametrize("route,form", [("/noise", {"t": "10"}), ("/invert", {"steps": "2"}), ("/likelihood", {})])
def test_every_upload_route_takes_an_upload_past_the_json_limit(server, route, form):
    """A photo-sized upload (here ~200 KB of noise) is within the upload limit on each route that takes one,
    not refused at the few KiB a JSON body gets."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, "PNG")
    assert len(buf.getvalue()) > 100_000
    r = httpx.post(server.url + API + route, files={"image": ("big.png", buf.getvalue(), "image/png")}, data=form,
                   timeout=300)
    assert r.status_code == 200, r.text

@pytest.mark.parametrize("header", ["x", "-1", "1.5"])
def test_a_bad_last_event_id_header_is_a_422_on_the_header(server, header):
    job = httpx.post(server.url + API + "/jobs", json={"n": 1, "steps": 2}).json()
    r = httpx.get(f"{server.url}{API}/jobs/{job['id']}/events", headers={"Last-Event-ID": header})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["header", "last-event-id"] and "≥ 0" in err["msg"]


def test_steps_past_an_init_at_t0_names_the_init_not_the_model(server):
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, "PNG")
    init = httpx.post(server.url + API + "/noise", files={"image": ("x.png", png.getvalue(), "image/png")},
                      data={"t": "0"}).json()["id"]
    r = httpx.post(server.url + API + "/jobs", json={"n": 1, "steps": 2, "init": init})
    assert r.status_code == 422
    assert "steps must be ≤ 1 (the init image's t = 0, plus 1)" in r.json()["detail"][0]["msg"]


def test_formats_outside_the_list_are_415_even_when_pillow_could_read_them(server):
    tiff = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tiff, "TIFF")
    r = httpx.post(server.url + API + "/noise", files={"image": ("x.tif", tiff.getvalue(), "image/tiff")},
                   data={"t": "5"})
    assert r.status_code == 415 and "PNG, JPEG, GIF, WEBP, BMP" in r.json()["detail"]


def test_concurrent_uploads_beyond_the_decode_slots_get_429_with_retry_after(server):
    """One decode slot (DDPM_MAX_NOISE_UPLOADS=1) and six large uploads at once: the others are told to retry."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1800, 1800), dtype=np.uint8)).save(buf, "PNG", compress_level=0)
    payload = buf.getvalue()
    assert len(payload) < UPLOAD_LIMIT
    def upload(barrier: threading.Barrier, codes: list[httpx.Response]) -> None:
        barrier.wait()
        codes.append(httpx.post(server.url + API + "/noise", files={"image": ("x.png", payload, "image/png")},
                                data={"t": "5"}, timeout=60))

    for _attempt in range(3):  # the six must overlap in the decode; with ~0.1 s each they nearly always do
        codes: list[httpx.Response] = []
        barrier = threading.Barrier(6)
        threads = [threading.Thread(target=upload, args=(barrier, codes)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {r.status_code for r in codes} <= {200, 429}, [r.text[:200] for r in codes]
        refused = [r for r in codes if r.status_code == 429]
        if refused:
            assert refused[0].headers["Retry-After"] == "1" and "max_noise_uploads" in refused[0].json()["detail"]
            assert any(r.status_code == 200 for r in codes)
            return
        time.sleep(0.2)
    pytest.fail("six simultaneous uploads never overlapped in three tries")


def test_openapi_declares_this_servers_real_limits(server):
    """n ≤ the max batch (64 by default), steps ≤ T and the upload's t < T (the tiny model's T = 1000)."""
    schema = httpx.get(server.url + "/openapi.json").json()
    comps = schema["components"]["schemas"]
    for name in ("SampleRequest", "JobRequest"):
        assert comps[name]["properties"]["n"]["maximum"] == 64
        assert comps[name]["properties"]["steps"]["maximum"] == 1000
    assert comps["Body_post_noise_api_v1_noise_post"]["properties"]["t"]["maximum"] == 999
    params = {p["name"]: p["schema"] for p in schema["paths"][API + "/stream"]["get"]["parameters"]}
    assert (params["n"]["maximum"], params["steps"]["maximum"]) == (64, 1000)
    r = httpx.post(server.url + API + "/jobs", json={"n": 65, "steps": 2})
    assert r.status_code == 422 and "n must be ≤ 64" in r.json()["detail"][0]["msg"]
