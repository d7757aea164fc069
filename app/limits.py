"""Refuse oversized uploads from their Content-Length, before a byte of the body is read.

Without this, the multipart parser would spool a huge body to a temp file before the route could
say 413: a client could fill the disk, and would wait for the whole upload to learn it was too big.
A body sent without Content-Length (chunked) is still capped by the route itself.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and the small form fields around the file


class UploadLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, paths: tuple[str, ...]) -> None:
        self.app, self.max_bytes, self.paths = app, max_bytes + MULTIPART_SLACK, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_bytes:
                body = {"detail": f"image: a {int(declared)}-byte request exceeds the limit of "
                                  f"{self.max_bytes - MULTIPART_SLACK} bytes per image"}
                await JSONResponse(body, 413, headers={"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
