"""What the gateway logs, and how: text or one JSON object a line (FERRYMAN_LOG_FORMAT), and one access-log
line per request (logger `ferryman.access`) with what an operator asks of a request afterwards: who, which
model, what outcome, how long, what it cost, whether it fell back or escalated. Never the prompt or the answer,
never a key.

Events an operator must see are warnings: a replica down or back, a circuit breaker open or closed, a request
falling back or escalating, a budget alert.
"""
from __future__ import annotations

import json
import logging
import time

access = logging.getLogger("ferryman.access")
QUIET_PATHS = {"/health", "/ready", "/metrics"}  # probes and scrapes: access-logged at debug level only


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return super().format(record) + (f" {extra}" if extra else "")


def setup(log_format: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # a line per HTTP call (httpx: every replica health probe, every second) or per migration step is noise
    for chatty in ("alembic", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


class AccessLog:
    """ASGI middleware: one line per request once its answer is sent (a stream: once it ended and settled).
    The routes leave what they know in the request's state: tenant, model asked for, the reply that served."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
            if access.isEnabledFor(level):
                fields = request_fields(scope, status[0], time.perf_counter() - started)
                access.log(level, "%s %s %d", scope["method"], scope["path"], status[0], extra={"fields": fields})


def request_fields(scope, status: int, latency_s: float) -> dict:
    state = scope.get("state", {})
    fields = {"method": scope["method"], "path": scope["path"], "status": status,
              "latency_ms": round(latency_s * 1000, 1), "tenant": state.get("tenant"),
              "model": state.get("model") or None, "trace_id": state.get("trace_id")}
    reply = state.get("reply")
    if reply is not None:
        ticket, usage = reply.ticket, reply.ticket.final_usage()
        fields.update(request_id=ticket.request_id, model=ticket.model, route_group=ticket.plan.group,
                      route=ticket.route, outcome=ticket.outcome, prompt_tokens=usage.prompt_tokens,
                      completion_tokens=usage.completion_tokens, cost_usd=reply.cost_micros() / 1e6,
                      fallback_from=",".join(reply.fallback_from) or None,
                      escalated_from=reply.earlier[-1].request_id if reply.earlier else None)
    return fields
