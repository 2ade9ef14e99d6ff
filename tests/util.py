"""Helpers shared by the test suites: a loopback server for ASGI apps and a transparent router."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import uvicorn

from classifier.router import PolicyTable


class LengthRouter:
    """Difficulty = prompt length / 100, so tests choose the route by how long the question is: at 0.5 or more the
    strongest tier (1 - large_share with a tenant's share). It implements classifier/router.py's Router protocol,
    so the gateway treats it as any router: never unfamiliar, one cut, and like a real router the live window of a
    group and tenant moves the cut once it holds classifier.live.MIN_SCORES scores."""

    # lengths are taken as spread evenly over [0, 1]: a cut t sends 1 - t of the calls large
    route = PolicyTable(np.array([np.inf, *np.linspace(1.0, 0.0, 11), -np.inf]),
                        np.array([0.0, *np.linspace(0.0, 1.0, 11), 1.0]),
                        np.array([0.5, *np.linspace(0.5, 1.0, 11), 1.0]))
    meta = {"default_policy": {"large_share": 0.5}}

    def score(self, text: str) -> float:
        return min(1.0, len(text) / 100)

    def assess(self, text: str) -> tuple[float, bool]:
        return self.score(text), False

    def threshold_for(self, quality_floor=None, large_share=None) -> float:
        return 0.5 if large_share is None else 1.0 - large_share

    def tier_thresholds(self, quality_floor=None, large_share=None) -> list[float]:
        return [self.threshold_for(quality_floor, large_share)]

    def tier_for(self, score: float, thresholds: list[float]) -> int:
        return sum(score >= t for t in thresholds)

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


