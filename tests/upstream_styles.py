"""OpenAI-compatible upstreams with the socket habits of real servers, for the interop tests and the bench.

Python's http.server (a thread per connection) writes a response's head and body in separate sends; without
TCP_NODELAY the body then waits for the head's ACK, which a client's kernel delays up to 40 ms (Nagle meets
delayed ACK). Styles: "nagle" (Content-Length), "nagle-chunked", "http10" (HTTP/1.0, closes after each answer),
"idle-close" (closes each connection once idle, without saying so); "nodelay" and "nodelay-chunked" are the
well-behaved copies. `answer(body)` gives the JSON answer or, for a streaming request, the SSE events.
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

STYLES = ("nagle", "nagle-chunked", "http10", "idle-close", "nodelay", "nodelay-chunked")


def handler(style: str, answer: Callable[[dict], dict | list[dict]]):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0" if style == "http10" else "HTTP/1.1"

        def setup(self):
            super().setup()
            if style.startswith("nodelay"):
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self):
            result = answer(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            if isinstance(result, list):  # a stream: SSE events, one send each
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


@contextlib.contextmanager
def upstream(style: str, answer: Callable[[dict], dict | list[dict]], port: int = 0):
    """A running upstream of that style on loopback; yields its base URL (…/v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(style, answer))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
