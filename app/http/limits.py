"""Cap every request body: uploads at the operator's limit, a playground job's drawn points at what the most of
them take, everything else at a few KiB.

A body that declares too large a Content-Length is refused before a byte of it is read. A body sent
without one (chunked) is counted as it arrives and refused at the first chunk past the limit, so the
multipart parser never spools more than the limit to a temp file and a JSON route never holds more
than the limit in memory.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and the small form fields around the file
MAX_JSON_BODY = 64 * 1024  # the largest valid request is a few hundred bytes, except a playground job's
#: A playground job's body: MAX_DRAWN_POINTS pairs written at full float precision (46 bytes each), and the rest.
MAX_POINTS_BODY = 128 * 1024


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_upload_bytes`` (+ slack) on ``upload_paths``, over
    ``max_other_bytes`` elsewhere."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int, upload_paths: tuple[str, ...],
                 points_paths: tuple[str, ...] = (), max_other_bytes: int = MAX_JSON_BODY) -> None:
        self.app, self.upload_paths, self.points_paths = app, upload_paths, points_paths
        self.max_upload, self.max_other = max_upload_bytes, max_other_bytes

    def _limit(self, path: str) -> tuple[int, str]:
        if path in self.upload_paths:
            return (self.max_upload + MULTIPART_SLACK,
                    f"the limit of {self.max_upload} bytes per image (plus {MULTIPART_SLACK} for the form)")
        if path in self.points_paths:
            return MAX_POINTS_BODY, f"the limit of {MAX_POINTS_BODY} bytes per playground request"
        return self.max_other, f"the limit of {self.max_other} bytes per request body"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, says = self._limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            body = {"detail": f"request body: {int(declared)} bytes exceeds {says}"}
            await JSONResponse(body, 413, headers={"Connection": "close"})(scope, receive, send)
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            # Once the response has started, only disconnect listeners (the SSE routes') read, and they drop
            # the body: it is too late for a 413, and a fake disconnect would cut the stream mid-chunk.
            if message["type"] == "http.request" and not started:
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException, because FastAPI turns any other error while it reads a body into a 400.
                    raise HTTPException(413, f"request body: over {limit} bytes, past {says}",
                                        headers={"Connection": "close"})
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched)
