"""The admin page's live view: request rate, p95 latency, error share and each engine's state over the last
seconds, computed from snapshots of the gateway's own Prometheus registry (the gateway keeps no history)."""
from __future__ import annotations

import math
from collections import deque

from prometheus_client import CollectorRegistry

from gateway import metrics


class LiveWindow:
    """Request rate, p95 latency and token rates over the last `window_s` seconds, from snapshots of the
    Prometheus registry taken whenever the admin page polls: the gateway keeps no history of its own."""

    def __init__(self, window_s: float = 15.0):
        self.window_s = window_s
        self.snapshots: deque[tuple[float, dict]] = deque(maxlen=1000)

    def add(self, now: float, snapshot: dict) -> tuple[float, dict]:
        """Keep the newest snapshot at least `window_s` old as the baseline, and return it."""
        self.snapshots.append((now, snapshot))
        while len(self.snapshots) > 1 and now - self.snapshots[1][0] >= self.window_s:
            self.snapshots.popleft()
        return self.snapshots[0]

    def view(self, now: float, snap: dict) -> dict:
        """The live view's figures (admin.LiveView) from the baseline snapshot to `snap`, taken `now`."""
        since, base = self.add(now, snap)
        window = now - since
        done = snap["requests"] - base["requests"]
        buckets = {le: count - base["buckets"].get(le, 0.0) for le, count in snap["buckets"].items()}
        engines = []
        for model, now_engine in sorted(snap["engines"].items()):
            # max(0, ...): an engine unloaded and loaded again starts its counter afresh
            generated = max(0.0, now_engine.get("generated_tokens", 0.0)
                            - base["engines"].get(model, {}).get("generated_tokens", 0.0))
            engines.append({"model": model, "kv_cache_usage": now_engine.get("kv_cache_usage"),
                            "running": int(now_engine.get("running", 0)), "waiting": int(now_engine.get("waiting", 0)),
                            "tokens_per_s": generated / window if window > 0 else None})
        return {"window_s": window, "requests_total": int(snap["requests"]),
                "requests_per_s": done / window if window > 0 else None,
                "p95_latency_s": quantile(0.95, buckets) if window > 0 else None,
                "error_share": (snap["errors"] - base["errors"]) / done if done > 0 else None,
                "engines": engines}


ENGINE_SAMPLES = {"ferryman_engine_kv_cache_usage_ratio": "kv_cache_usage",
                  "ferryman_engine_running_requests": "running", "ferryman_engine_waiting_requests": "waiting",
                  "ferryman_engine_generation_tokens_total": "generated_tokens"}


def registry_snapshot(registry: CollectorRegistry | None = None) -> dict:
    """The cumulative figures the live view needs, summed over routes: latency buckets, outcomes, engine state.
    A refused request (429, 402, 403, 400, 503 before any work) counts as a request and an error."""
    snap = {"buckets": {}, "requests": 0.0, "errors": 0.0, "engines": {}}
    for family in (registry or metrics.registry()).collect():
        for s in family.samples:
            if s.name == "ferryman_request_seconds_bucket":
                le = float(s.labels["le"])
                snap["buckets"][le] = snap["buckets"].get(le, 0.0) + s.value
            elif s.name == "ferryman_requests_total":
                snap["requests"] += s.value
                snap["errors"] += s.value if s.labels["status"] != "ok" else 0.0
            elif s.name == "ferryman_rejected_total":
                snap["requests"] += s.value
                snap["errors"] += s.value
            elif s.name in ENGINE_SAMPLES:
                engine = snap["engines"].setdefault(s.labels["model"], {})
                engine[ENGINE_SAMPLES[s.name]] = s.value
    return snap


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket holding the q-th observation."""
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le in sorted(buckets):
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # past the last finite bucket all we know is "more than this"
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    return lower

