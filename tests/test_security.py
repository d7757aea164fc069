"""A server on a network, against real uvicorn: per-client job limits, X-Forwarded-For only from trusted
proxies, the optional API token with its page session, and CORS (closed unless configured)."""

from __future__ import annotations

import httpx
import pytest

from app.http.security import SESSION_COOKIE, client_address, parse_networks

from .server_utils import Server, sse_events, start_server, tiny_model_file

API = "/api/v1"
TOKEN = "correct-horse-battery-staple"
ORIGIN = "https://demo.example"
# stays live until cancelled or ~1 s of ticks
LONG_JOB = {"n": 1, "sampler": "ddpm", "steps": 1000, "frame_every": 1000}


def _serve(tmp_path_factory, name: str, **env: str) -> Server:
    tmp = tmp_path_factory.mktemp(name)
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv("DDPM_" + key.upper(), value)
    try:
        return start_server(tiny_model_file(tmp / "tiny.safetensors"), tmp / "server.log")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """Behind a proxy on loopback: X-Forwarded-For names the client. One job runs at a time, so the rest queue."""
    s = _serve(tmp_path_factory, "proxied", max_jobs_per_client="2", trusted_proxies="127.0.0.1",
               max_active_jobs="1", cors_origins=ORIGIN)
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text()


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    """No trusted proxy: X-Forwarded-For is the client's to forge, so it is ignored."""
    s = _serve(tmp_path_factory, "direct", max_jobs_per_client="2", max_active_jobs="1")
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    s = _serve(tmp_path_factory, "guarded", api_token=TOKEN, cors_origins=ORIGIN)
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text()


def _post_job(server: Server, client: str) -> httpx.Response:
    return httpx.post(server.url + API + "/jobs", json=LONG_JOB, headers={"X-Forwarded-For": client}, timeout=10)


def _cancel(server: Server, *ids: str) -> None:
    for job_id in ids:
        assert httpx.delete(f"{server.url}{API}/jobs/{job_id}", timeout=10).status_code == 200


def test_the_client_is_the_nearest_untrusted_hop():
    proxies = parse_networks("10.0.0.0/8, 127.0.0.1", "trusted_proxies")
    assert client_address("127.0.0.1", "203.0.113.7", proxies) == "203.0.113.7"
    # A client that forges a hop of its own is still named by the hop the trusted proxy added.
    assert client_address("127.0.0.1", "1.2.3.4, 203.0.113.7, 10.1.2.3", proxies) == "203.0.113.7"
    assert client_address("198.51.100.1", "203.0.113.7", proxies) == "198.51.100.1"  # untrusted peer
    assert client_address("127.0.0.1", None, proxies) == "127.0.0.1"
    with pytest.raises(ValueError, match=r"trusted_proxies: 'proxy\.local'"):
        parse_networks("proxy.local", "trusted_proxies")


def test_a_greedy_client_gets_429_while_others_still_get_jobs(proxied):
    greedy = [_post_job(proxied, "203.0.113.7") for _ in range(2)]
    assert [r.status_code for r in greedy] == [202, 202]
    refused = _post_job(proxied, "203.0.113.7")
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert "203.0.113.7" in refused.json()["detail"] and "max_jobs_per_client" in refused.json()["detail"]
    # Every route that makes a job counts: the one-shot stream and /samples too.
    assert httpx.get(proxied.url + API + "/stream", params={"n": 1, "steps": 2},
                     headers={"X-Forwarded-For": "203.0.113.7"}, timeout=10).status_code == 429
    assert httpx.post(proxied.url + API + "/samples", json={"n": 1, "steps": 2},
                      headers={"X-Forwarded-For": "203.0.113.7"}, timeout=10).status_code == 429
    other = _post_job(proxied, "198.51.100.9")
    assert other.status_code == 202, other.text
    # The limit counts live jobs: once one of the greedy client's jobs ends, it may start another.
    _cancel(proxied, greedy[0].json()["id"])
    again = _post_job(proxied, "203.0.113.7")
    assert again.status_code == 202, again.text
    _cancel(proxied, greedy[1].json()["id"], other.json()["id"], again.json()["id"])


def test_forwarded_for_from_an_untrusted_peer_is_ignored(direct):
    first = [_post_job(direct, f"203.0.113.{i}") for i in (1, 2)]
    assert [r.status_code for r in first] == [202, 202]
    # A third "client" is the same peer forging another header: it is refused, named by its real address.
    forged = _post_job(direct, "203.0.113.3")
    assert forged.status_code == 429
    assert "127.0.0.1" in forged.json()["detail"]
    _cancel(direct, *(r.json()["id"] for r in first))


def test_cors_is_closed_by_default(direct):
    r = httpx.options(direct.url + API + "/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(direct.url + API + "/model", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_allows_the_configured_origin_only(proxied):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ok = httpx.options(proxied.url + API + "/jobs", headers={"Origin": ORIGIN, **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(proxied.url + API + "/jobs", headers={"Origin": "https://evil.example", **pre})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    r = httpx.get(proxied.url + API + "/model", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN


def test_the_api_needs_the_token(guarded):
    url = guarded.url + API + "/model"
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.get(url, headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer " + TOKEN}).status_code == 200
    assert httpx.post(guarded.url + API + "/samples", json={"n": 1, "steps": 2}).status_code == 401
    assert httpx.get(guarded.url + "/metrics").status_code == 401
    assert httpx.get(guarded.url + "/openapi.json").status_code == 401
    # Health checks and the page's static files stay open, for load balancers and the login page.
    assert httpx.get(guarded.url + "/readyz").status_code == 200
    assert httpx.get(guarded.url + "/healthz").status_code == 200


def test_cors_preflight_is_answered_without_the_token(guarded):
    r = httpx.options(guarded.url + API + "/jobs", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN


def test_the_page_works_through_its_session(guarded):
    assert httpx.get(guarded.url + "/").status_code == 401
    assert httpx.get(guarded.url + "/", params={"token": "wrong-token-wrong-token"}).status_code == 401
    with httpx.Client(base_url=guarded.url, timeout=30) as browser:
        login = browser.get("/", params={"token": TOKEN})
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert TOKEN not in cookie
        page = browser.get("/")
        assert page.status_code == 200 and "<html" in page.text
        assert browser.get(API + "/model").status_code == 200
        with browser.stream("GET", API + "/stream", params={"n": 1, "steps": 3}) as r:
            assert r.status_code == 200
            events = [e.event for e in sse_events(r)]
        assert events[-1] == "done"
    # Another client without the cookie is still refused.
    assert httpx.get(guarded.url + API + "/model").status_code == 401


def test_a_short_token_is_refused_at_start(tmp_path):
    import subprocess
    import sys

    from .server_utils import ROOT

    env = {"PYTHONPATH": str(ROOT), "DDPM_API_TOKEN": "short", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "ddpm serve: error: DDPM_API_TOKEN: Value error, must be at least 16 characters; "
        "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe())'"]
