"""OpenAI-compatible upstreams with the socket habits of real servers, for the interop tests and the bench.

Python's http.server (a thread per connection) writes a response's head and body in separate sends; without
TCP_NODELAY the body then waits for the head's ACK, which a client's kernel delays up to 40 ms (Nagle meets
delayed ACK). Styles: "nagle" (Content-Length), "nagle-chunked", "http10" (HTTP/1.0, closes after each answer),
"idle-close" (closes each connection once idle, without saying so); "nodelay" and "nodelay-chunked" are the
well-behaved copies. `answer(body)` gives the JSON answer or, for a streaming request, the SSE events, or the raw
bytes of a recorded stream (tests/transcripts/), sent as they are in uneven pieces: an event, a line, a JSON string
or a UTF-8 character may be cut anywhere, as TCP may cut them.
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

STYLES = ("nagle", "nagle-chunked", "http10", "idle-close", "nodelay", "nodelay-chunked")


def handler(style: str, answer: Callable[[dict], dict | list[dict] | tuple[int, dict]], key: str | None = None,
            hang: threading.Event | None = None):
    """`answer` may also give (status, error body); `key`: requests without it get 401; while `hang` is set, chat
    requests get no answer at all (a hung server whose health endpoint still answers)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0" if style == "http10" else "HTTP/1.1"

        def setup(self):
            super().setup()
            if style.startswith("nodelay"):
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def refused(self) -> bool:
            if key is None or self.headers.get("authorization") == f"Bearer {key}":
                return False
            self.reply(401, {"error": {"message": "Incorrect API key provided: sk-wr***", "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}})
            return True

        def reply(self, status: int, result: dict) -> None:
            whole = json.dumps(result).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(whole)))
            self.end_headers()
            self.wfile.write(whole)

        def do_GET(self):
            if not self.refused():
                self.reply(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.refused():
                return
            while hang is not None and hang.is_set():
                time.sleep(0.05)
            result = answer(body)
            if isinstance(result, tuple):
                return self.reply(*result)
            if isinstance(result, bytes):  # a recorded stream, replayed byte for byte, cut anywhere
                parts, kind, length = _uneven(result), "text/event-stream", None
            elif isinstance(result, list):  # a stream: SSE events, one send each
                parts = [b"data: %s\n\n" % json.dumps(e).encode() for e in result] + [b"data: [DONE]\n\n"]
                kind, length = "text/event-stream", None
            else:
                whole = json.dumps(result).encode()
                parts, kind, length = [whole[:len(whole) // 2], whole[len(whole) // 2:]], "application/json", len(whole)
            self.send_response(200)
            self.send_header("content-type", kind)
            if style == "http10":  # no chunked encoding in HTTP/1.0: a length, or the body runs to the close
                self.send_header("content-length", str(length)) if length else None
            elif style.endswith("chunked") or length is None:
                self.send_header("transfer-encoding", "chunked")
                parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in [*parts, b""]]
            else:
                self.send_header("content-length", str(length))
                parts = [b"".join(parts)]
            self.end_headers()
            for part in parts:
                self.wfile.write(part)
            self.close_connection = self.close_connection or style == "idle-close"

        def log_message(self, *args):
            pass

    return Handler


def _uneven(data: bytes) -> list[bytes]:
    """`data` in pieces of 1, 2, 3, 5, 8, ... 89 bytes, over and over."""
    sizes, parts, at = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89), [], 0
    while at < len(data):
        parts.append(data[at:at + sizes[len(parts) % len(sizes)]])
        at += len(parts[-1])
    return parts


@contextlib.contextmanager
def upstream(style: str, answer: Callable, port: int = 0, key: str | None = None, hang: threading.Event | None = None):
    """A running upstream of that style on loopback; yields its base URL (…/v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(style, answer, key, hang))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
