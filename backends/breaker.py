"""A circuit breaker with a health flag: what keeps traffic off an upstream (a model's server, or one replica)
that is down, hung or refusing the operator's key, and lets it back once it answers again.

Requests that fail before their first token (refused or dropped connection, HTTP 5xx, an answer that is not one)
count; `threshold` of them in a row open the breaker for `cooldown_s`, after which one request may try again (a
failure reopens it at once). A request that timed out before its first token (or, on a replica, went silent
mid-stream) opens it at once: a hung upstream costs one request one time-out, not every request. Used by every
remote kind: one per `kind: openai` model, one per replica of a `kind: replicas` model. A periodic probe sets
`healthy`; a refused key takes the upstream out of service (`down`) until a probe gets through. Opening, closing,
down and back are warnings (an operator must see them); a probe that keeps failing is logged once.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("ferryman.breaker")


class Breaker:
    def __init__(self, name: str, threshold: int = 3, cooldown_s: float = 5.0):
        self.name, self.threshold, self.cooldown_s = name, threshold, cooldown_s
        self.failures, self.open_until = 0, 0.0
        self.healthy, self.reason, self.code = True, "", "model_unavailable"

    def available(self) -> bool:
        return self.healthy and time.monotonic() >= self.open_until

    def state(self) -> dict:
        """What /ready reports: up, down (the probe fails or the key is refused), or open (requests failed)."""
        if not self.healthy:
            return {"state": "down", "reason": self.reason}
        if time.monotonic() < self.open_until:
            return {"state": "open", "reason": self.reason, "failures": self.failures}
        return {"state": "up"}

    def succeeded(self) -> None:
        if self.failures >= self.threshold:
            log.warning("%s: circuit closed (answered again)", self.name)
        self.failures, self.open_until = 0, 0.0

    def failed(self, reason: str, at_once: bool = False) -> None:
        """A request failed before its first token; `at_once` (it timed out: the costliest failure) opens the
        breaker without waiting for the threshold."""
        self.failures = max(self.failures + 1, self.threshold if at_once else 0)
        if self.failures >= self.threshold:
            if time.monotonic() >= self.open_until:
                log.warning("%s: circuit open for %g s after %d failures in a row: %s", self.name, self.cooldown_s,
                            self.failures, reason)
            self.open_until, self.reason, self.code = time.monotonic() + self.cooldown_s, reason, "model_unavailable"

    def probed(self, ok: bool, reason: str = "", code: str = "model_unavailable") -> None:
        """A health probe's verdict: ok brings the upstream back; otherwise it is down, for `reason`."""
        if ok and not self.healthy:
            log.warning("%s: health probe answers again", self.name)
        elif not ok and (self.healthy or reason != self.reason):
            log.warning("%s: health probe failed: %s", self.name, reason)
        self.healthy = ok
        if not ok:
            self.reason, self.code = reason, code

    def auth_failed(self, reason: str) -> None:
        """The upstream refused the operator's key: out of service until a probe gets through, and said loudly."""
        log.error("%s: the upstream refused Ferryman's credentials (%s); the model is out of service until this "
                  "is fixed (check its api_key_env)", self.name, reason)
        self.healthy, self.reason, self.code = False, reason, "upstream_auth_failed"
