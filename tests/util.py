"""Helpers shared by the test suites: a loopback server for ASGI apps and a transparent router."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn


class LengthRouter:
    """Difficulty = prompt length / 100, so tests choose the route by how long the question is."""

    def score(self, text: str) -> float:
        return min(1.0, len(text) / 100)

    def threshold_for(self, quality_floor=None, large_share=None) -> float:
        return 0.5 if large_share is None else 1.0 - large_share

    def cascade_escalate(self, small_logprobs, quality_floor=None, large_share=None) -> bool:
        return not small_logprobs or sum(small_logprobs) / len(small_logprobs) < -1.0


@contextmanager
def serve(app, settings=None):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; with the gateway's `settings`, behind its
    HTTP limits as `ferryman serve` runs it (gateway/http_limits.py)."""
    from gateway.http_limits import uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = (uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="warning") if settings else
              uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


