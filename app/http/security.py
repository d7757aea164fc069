"""What a server on a network needs: per-client job limits, an optional API token, and CORS.

- **Fairness:** each client address may hold at most ``max_jobs_per_client`` live (queued or running)
  jobs, so one client cannot fill the queue. The address is the TCP peer's, or, when the peer is a
  trusted proxy, the nearest untrusted address in its ``X-Forwarded-For``.
- **Token:** with ``api_token`` set, every route but the health checks and the static files needs
  ``Authorization: Bearer <token>`` or the page session: ``/?token=<token>`` answers with an HttpOnly,
  SameSite=Strict cookie and a redirect to ``/``, and the page's own requests then carry that cookie.
- **CORS:** closed unless ``cors_origins`` names the origins that may call the API from a browser.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import Network, Settings, parse_networks

if TYPE_CHECKING:
    from ..runtime.jobs import BaseJob

JobKind = TypeVar("JobKind", bound="BaseJob")
SESSION_COOKIE = "ddpm_session"
OPEN_PATHS = ("/healthz", "/readyz")
OPEN_PREFIXES = ("/static/",)
CLIENT_RETRY_AFTER_S = 5


def parse_origins(spec: str) -> list[str]:
    return [s.strip().rstrip("/") for s in spec.split(",") if s.strip()]


def _trusted(address: str, proxies: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: list[Network]) -> str:
    """The client a request speaks for. Each trusted proxy appends the address it received the request from,
    so the list is read from the right, past trusted proxies; anything further left is the client's to forge."""
    if not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


class ClientJobs:
    """Live jobs per client address, and the limit on them."""

    def __init__(self, limit: int, trusted_proxies: str) -> None:
        self.limit, self.proxies = limit, parse_networks(trusted_proxies, "trusted_proxies")
        self._jobs: dict[str, list[BaseJob]] = {}
        self._lock = threading.Lock()

    def client(self, request: Request) -> str:
        peer = request.client.host if request.client else ""
        return client_address(peer, request.headers.get("x-forwarded-for"), self.proxies)

    def submit(self, client: str, submit: Callable[[], JobKind]) -> JobKind:
        """``submit()``, unless ``client`` already holds ``limit`` live jobs (429). Checking and recording
        under one lock keeps concurrent requests from one client from slipping past the limit together."""
        with self._lock:
            self._forget_finished()
            live = self._jobs.get(client, [])
            if self.limit and len(live) >= self.limit:
                raise HTTPException(429, f"this client ({client}) already has {len(live)} live jobs, the limit "
                                         f"(max_jobs_per_client); retry when one finishes",
                                    headers={"Retry-After": str(CLIENT_RETRY_AFTER_S)})
            job = submit()
            self._jobs[client] = [*live, job]
            return job

    def _forget_finished(self) -> None:
        for client in list(self._jobs):
            live = [j for j in self._jobs[client] if not j.done]
            if live:
                self._jobs[client] = live
            else:
                del self._jobs[client]


def session_value(token: str) -> str:
    """The page session's cookie: derived from the token, so replicas sharing a token share sessions and a
    new token ends every old session."""
    return hmac.new(token.encode(), b"ddpm page session", hashlib.sha256).hexdigest()


class TokenAuth:
    """ASGI middleware: 401 without the bearer token or the page session, except on the open paths."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token, self.session = app, token, session_value(token)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
        except CookieError:  # a malformed Cookie header is just no session
            return False
        morsel = cookie.get(SESSION_COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self.session.encode())

    def _login(self, scope: Scope) -> Response | None:
        """``/?token=…``: the page session, and a redirect that takes the token out of the address bar."""
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, self.session, httponly=True, samesite="strict", path="/",
                            secure=scope.get("scheme") == "https")
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self._authorized(dict(scope["headers"])):
            await self.app(scope, receive, send)
            return
        response: Response | None = self._login(scope) if path == "/" else None
        if response is None and path == "/":
            response = HTMLResponse("<!doctype html><title>DDPM demo</title><p>This server needs its access "
                                    "token: open <code>/?token=…</code> once, and the page keeps a session.",
                                    status_code=401)
        if response is None:
            response = JSONResponse({"detail": "missing or wrong token: send Authorization: Bearer <token> "
                                               "(DDPM_API_TOKEN)"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="ddpm"'})
        await response(scope, receive, send)


def secure(app: FastAPI, settings: Settings) -> None:
    """Add the token check, then CORS outside it, so that a browser's preflight (which carries no token)
    is answered by CORS alone."""
    if settings.api_token is not None:
        app.add_middleware(TokenAuth, token=settings.api_token.get_secret_value())
    origins = parse_origins(settings.cors_origins)
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                           expose_headers=["Retry-After", "X-Seed"], max_age=600)
