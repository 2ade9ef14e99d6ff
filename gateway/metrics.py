"""The gateway's own Prometheus metrics. The engine registers its metrics in the same default registry,
so one /metrics shows the whole path.

Label values are names (route labels, model and route-group names, refusal reasons), never internal ids. Tenant
names appear only with FERRYMAN_METRICS_TENANTS=true: how much a tenant sends and how it grades its answers is
its own business, and /metrics is read by whoever runs the monitoring.

With `ferryman serve --workers N` every worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode, set up by gateway/workers.py) and any worker's /metrics answers the sum.
"""
from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

REQUESTS = Counter("ferryman_requests_total", "Requests settled, by route and outcome", ["route", "status"])
LATENCY = Histogram("ferryman_request_seconds", "Whole-request latency", ["route"],
                    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TTFT = Histogram("ferryman_time_to_first_token_seconds", "Time to first token through the gateway", ["route"],
                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
TOKENS = Counter("ferryman_tokens_total", "Tokens processed", ["route", "kind"])
COST = Counter("ferryman_cost_usd_total", "Money charged to tenants", ["model"])
# A request billed past its hold (an upstream that generated more than asked, a template longer than allowed for):
# how often, and by how much in all. The budget it went over by is in the usage records.
OVERRUNS = Counter("ferryman_billing_overruns_total", "Requests whose charge passed their budget hold", ["model"])
OVERRUN_COST = Counter("ferryman_billing_overrun_usd_total", "Money charged past budget holds", ["model"])
# `model` is the model or route group the request named (one the catalog knows; "" for any other name or none).
REJECTED = Counter("ferryman_rejected_total", "Requests refused before any work, by reason and requested model",
                   ["reason", "model"])
# Router targets per route group and tenant (only with FERRYMAN_METRICS_TENANTS=true): the realised strong-tier
# share over this process's live window against the share its target asks for, and the feedback tenants give.
# Across workers the most recent value of any worker is shown.
STRONG_SHARE = Gauge("ferryman_router_strong_share", "Share of the recent window routed to the strongest tier",
                     ["group", "tenant"], multiprocess_mode="mostrecent")
STRONG_TARGET = Gauge("ferryman_router_strong_share_target", "Strongest-tier share the tenant's target asks for",
                      ["group", "tenant"], multiprocess_mode="mostrecent")
# Prompts unlike anything the group's router was trained on (Router.assess): its score says little about them.
UNFAMILIAR = Counter("ferryman_router_unfamiliar_total", "Routed prompts unlike the router's training prompts", ["group"])
# Its _count is the feedback count, _sum / _count the mean; group "" is feedback on a request that named a model;
# tenant "" is every tenant together (per-tenant series only with FERRYMAN_METRICS_TENANTS=true).
FEEDBACK = Histogram("ferryman_feedback_score", "Tenant feedback on answers (0..1)", ["group", "tenant"],
                     buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
FEEDBACK_QUALITY = Gauge("ferryman_router_feedback_quality", "Mean feedback score over the recent window",
                         ["group", "tenant"], multiprocess_mode="mostrecent")

# A refusal's reason, from its error code; any other refusal is named by its status.
REASONS = {"rate_limit_exceeded": "rate_limited", "budget_exceeded": "budget_exceeded", "budget_held": "budget_held",
           "model_not_allowed": "forbidden_model", "upstream_rate_limited": "unavailable"}
STATUS_REASONS = {400: "bad_request", 404: "bad_request", 405: "bad_request", 413: "bad_request",
                  422: "bad_request", 401: "unauthorized", 403: "forbidden_model", 429: "rate_limited",
                  503: "unavailable"}


_SERIES: dict = {}


def series(metric, *labels: str):
    """metric.labels(*labels), the same child prometheus_client keeps, found once: its labels() checks and locks on
    every call, six times a request. Only for labels of bounded count (routes, models, statuses)."""
    child = _SERIES.get((metric, labels))
    if child is None:
        child = _SERIES[metric, labels] = metric.labels(*labels)
    return child


def refused(status: int, code: str | None, model: str = "") -> None:
    """Count a request refused before any work; a status that is no refusal (a 500 is a fault) is not counted."""
    if why := REASONS.get(code or "") or STATUS_REASONS.get(status):
        REJECTED.labels(why, model).inc()


def registry() -> CollectorRegistry:
    """What /metrics and the admin page's live view read: this process's registry, or, under `--workers N`,
    every worker's samples summed."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


def router_window(group: str, tenant: str, window) -> None:
    STRONG_SHARE.labels(group, tenant).set(window.realised_share())
    STRONG_TARGET.labels(group, tenant).set(window.target)
