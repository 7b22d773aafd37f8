"""A request-body size limit as pure ASGI middleware: 413 before the application sees the body.

It counts the chunks as they arrive, so a body streamed without Content-Length is cut off at the
limit too, and it refuses a declared Content-Length over the limit before reading anything. A
route may have a bound of its own (the model upload: a file up to the broker's record limit).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteLimit:
    """One route's own bound, and how its 413 says so: ``"<what> larger than N bytes<why>"``."""

    max_bytes: int
    what: str = "request body"
    why: str = ""

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError("max_bytes must not be negative")

    @property
    def detail(self) -> str:
        return f"{self.what} larger than {self.max_bytes} bytes{self.why}"


class BodyLimit:
    """Answer 413 ``{"detail": ...}`` to any HTTP request whose body exceeds ``max_body_bytes``,
    or its own bound for a ``(method, path)`` that ``routes`` names.

    The body is read (at most the bound of it) before the application runs and handed on in
    one piece; FastAPI reads whole bodies anyway, so this holds no more in memory than the
    application would.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        routes: Mapping[tuple[str, str], RouteLimit] | None = None,
    ) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must not be negative")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.default = RouteLimit(max_body_bytes)
        self.routes = dict(routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.routes.get((scope["method"], scope["path"]), self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit.max_bytes:
            await _too_large(limit, scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit.max_bytes:
                await _too_large(limit, scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


async def _too_large(limit: RouteLimit, scope: Scope, receive: Receive, send: Send) -> None:
    logger.info("refused a %s over %d bytes", limit.what, limit.max_bytes)
    # No "Connection: close": the server then discards the rest of the body (up to its
    # keep-alive timeout) instead of resetting a client that is still sending, which
    # would lose this answer.
    response = JSONResponse({"detail": limit.detail}, status_code=413)
    await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Return a ``receive`` that yields ``body`` once, then defers to the server's."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
