"""HTTP limits below the app: what a connection may send before a route ever runs.

uvicorn's httptools protocol, as the gateway serves it, sets no limit on a request's head (a 64 MiB header was
read whole and answered 200) and answers malformed HTTP in plain text. `GuardedHttp` is that protocol with:

- the request line (method, target, version) at most `max_request_line_bytes`: else 414;
- the headers at most `max_headers` in number and `max_header_bytes` in all: else 431, as soon as the head
  passes the limit while it is still arriving (never buffered whole);
- a whole request (head and body) within `request_timeout_s` of its first byte, or of the connection's opening
  for its first request: else 408 (a connection that sends nothing, or trickles its bytes, is closed);
- at most `max_connections_per_client` connections open from one client address in this process (0: no cap):
  the next one is answered 429 and closed. Behind a proxy every client has the proxy's address: raise or disable it;
- malformed HTTP answered 400 in the OpenAI error shape.

Each refusal is a JSON OpenAI error object, then the connection is closed. Keep-alive idling is uvicorn's own
`timeout_keep_alive` (`keep_alive_timeout_s`). All of it is set in gateway/config.py.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.config import Settings

log = logging.getLogger("ferryman")
LINGER_S = 1.0  # after a refusal, how long the client's bytes still in flight are read and dropped


@dataclass(frozen=True)
class HttpLimits:
    max_request_line_bytes: int
    max_header_bytes: int
    max_headers: int
    request_timeout_s: float
    max_connections_per_client: int

    @classmethod
    def of(cls, s: Settings) -> HttpLimits:
        return cls(s.max_request_line_bytes, s.max_header_bytes, s.max_headers, s.request_timeout_s,
                   s.max_connections_per_client)


def uvicorn_config(app, settings: Settings, **options) -> uvicorn.Config:
    """The gateway's uvicorn settings: the guarded protocol and the keep-alive timeout."""
    GuardedHttp.limits = HttpLimits.of(settings)
    return uvicorn.Config(app, http=GuardedHttp, timeout_keep_alive=settings.keep_alive_timeout_s, **options)


class GuardedHttp(HttpToolsProtocol):
    limits: HttpLimits | None = None  # set by uvicorn_config; a spawned worker reads its environment
    open_per_client: Counter = Counter()  # connections open per client address, in this process

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        GuardedHttp.limits = self.limits = self.limits or HttpLimits.of(Settings())
        self.head_bytes, self.header_count, self.header_bytes, self.in_head, self.refused = 0, 0, 0, True, False
        self.address, self.deadline = None, None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.address = self.client[0] if self.client else None
        self.open_per_client[self.address] += 1
        cap = self.limits.max_connections_per_client
        if cap and self.open_per_client[self.address] > cap:
            return self.refuse(429, f"Too many connections from your address (at most {cap} at a time).",
                               "too_many_connections")
        self._arm()

    def connection_lost(self, exc) -> None:
        self.open_per_client[self.address] -= 1
        if self.open_per_client[self.address] <= 0:
            del self.open_per_client[self.address]
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.in_head:
            self.head_bytes += len(data)
        super().data_received(data)
        # Still no end of the head: refused once it passes the limit, before the parser buffers more of it.
        if self.in_head and self.head_bytes > self.limits.max_request_line_bytes + self.limits.max_header_bytes:
            self.refuse(431, self._headers_too_large(), "request_header_fields_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.header_count, self.header_bytes = True, 0, 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line_bytes:
            self.refuse(414, f"The request's URL is longer than this gateway accepts "
                             f"({self.limits.max_request_line_bytes} bytes).", "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.refused:
            return
        self.header_count += 1
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_count > self.limits.max_headers:
            return self.refuse(431, f"The request has more headers than this gateway accepts "
                                    f"({self.limits.max_headers}).", "request_header_fields_too_large")
        if self.header_bytes > self.limits.max_header_bytes:
            return self.refuse(431, self._headers_too_large(), "request_header_fields_too_large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head, self.head_bytes = False, 0
        if not self.refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self.in_head = True  # what arrives next is the next request's head
        if not self.refused:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, "The request is not valid HTTP/1.1.", "malformed_http")

    def refuse(self, status: int, message: str, code: str) -> None:
        """Answer with an OpenAI error object (unless an answer of the app's is under way) and close."""
        if self.refused:
            return
        self.refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is None or not cycle.response_started or cycle.response_complete:
            error = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
            body = json.dumps(error).encode()
            self.transport.write(STATUS_LINE[status] + b"content-type: application/json\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        log.info("HTTP %d for %s: %s", status, self.address, code)
        # A lingering close: with unread bytes in its buffer a closed socket resets the connection, and the client
        # could lose the answer. Half-close, discard what still arrives (data_received drops it), close soon after.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _headers_too_large(self) -> str:
        return f"The request's headers are larger than this gateway accepts ({self.limits.max_header_bytes} bytes)."

    def _arm(self) -> None:
        if self.deadline is None:
            self.deadline = self.loop.call_later(self.limits.request_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _timed_out(self) -> None:
        self.deadline = None
        self.refuse(408, f"The request did not arrive within {self.limits.request_timeout_s:g} s.", "request_timeout")
