"""Slowing down whoever keeps sending requests that are refused before any work.

A flood of requests that are refused (junk keys: 401; bodies over a per-request limit, malformed or unknown
models: 400/404/413) costs the gateway a little each, and costs the other tenants the event loop and the CPU that
little takes, times the flood's rate. Each sender (the tenant when the key was valid, else the client address) has
a bucket of `burst` refusals refilled at `per_s`; past it, each further refusal is answered only after `delay_s`.
The wait costs nothing (a sleeping task), and an HTTP/1.1 client waits for its answer before it sends the next
request, so a flood slows to its connections / `delay_s` per second (connections per address are capped:
gateway/http_limits.py). Requests that are served are never delayed, nor are 402/429/503 (they say when to retry).
Per gateway process, on the tenants' API (`/v1/`); a legitimate client's occasional mistake stays within the burst.
"""
from __future__ import annotations

import time

DELAYED = {400, 401, 403, 404, 405, 413, 422}
MAX_SENDERS = 10_000  # random addresses must not grow the table without bound


class Tarpit:
    def __init__(self, per_s: float, burst: int, delay_s: float):
        self.per_s, self.burst, self.delay_s = per_s, burst, delay_s
        self.buckets: dict[str, tuple[float, float]] = {}  # sender -> (refusals left, when counted)

    def delay(self, sender: str, status: int) -> float:
        """How long to hold this refusal before answering it (0: at once)."""
        if not self.delay_s or status not in DELAYED:
            return 0.0
        now = time.monotonic()
        left, at = self.buckets.get(sender, (self.burst, now))
        left = min(self.burst, left + (now - at) * self.per_s) - 1
        if len(self.buckets) >= MAX_SENDERS:
            self.buckets.clear()
        self.buckets[sender] = (left, now)
        return 0.0 if left >= 0 else self.delay_s
