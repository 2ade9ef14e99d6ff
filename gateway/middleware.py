"""ASGI middleware that guards the gateway before any route runs: a body size limit and the restart drain.

Plain ASGI (not Starlette's BaseHTTPMiddleware) so that a refused body is never read whole and streams pass
through untouched.
"""
from __future__ import annotations

from gateway import metrics
from gateway.errors import APIError, unavailable

ALWAYS_OPEN = {"/health", "/ready", "/metrics"}  # probes keep answering while the gateway drains


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this gateway accepts ({limit} bytes). "
                         "Send a shorter prompt.", code="request_too_large")


class BodyLimit:
    """413 for a body over `max_bytes`: at once from Content-Length, or as soon as a chunked body passes it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if _content_length(scope) > self.max_bytes:
            return await _refuse(too_large(self.max_bytes), scope, receive, send)
        received, refused = 0, False

        async def counted_receive():
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes and not refused:
                refused = True
                await _refuse(too_large(self.max_bytes), scope, receive, send)
            # The app sees a client that left: it stops reading and its own answer goes nowhere.
            return {"type": "http.disconnect"} if refused else message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, counted_receive, guarded_send)


async def _refuse(error: APIError, scope, receive, send) -> None:
    """Answer before any route ran; a tenant request's refusal is counted (gateway/errors.py counts the rest)."""
    if scope["path"].startswith("/v1/"):
        metrics.refused(error.status, error.code)
    await error.response()(scope, receive, send)


def _content_length(scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


class DrainGate:
    """Counts requests in flight; once the gateway drains, new requests get 503 with Retry-After."""

    def __init__(self, app, drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in ALWAYS_OPEN:
            return await self.app(scope, receive, send)
        if self.drain.draining:
            refusal = unavailable("The gateway is restarting; retry the request.", "shutting_down")
            return await _refuse(refusal, scope, receive, send)
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
