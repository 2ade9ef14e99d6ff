"""The gateway's own Prometheus metrics. The engine registers its metrics in the same default registry,
so one /metrics shows the whole path. No tenant names in labels: they are unbounded and private."""
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("ferryman_requests_total", "Requests settled, by route and outcome", ["route", "status"])
LATENCY = Histogram("ferryman_request_seconds", "Whole-request latency", ["route"],
                    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TTFT = Histogram("ferryman_time_to_first_token_seconds", "Time to first token through the gateway", ["route"],
                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
TOKENS = Counter("ferryman_tokens_total", "Tokens processed", ["route", "kind"])
COST = Counter("ferryman_cost_usd_total", "Money charged to tenants", ["model"])
REJECTED = Counter("ferryman_rejected_total", "Requests refused before any work", ["reason"])
# Router targets per route group and tenant (tenant id, never its name): the realised strong-tier share over the
# live window against the share its target asks for, and the feedback tenants give on their answers.
STRONG_SHARE = Gauge("ferryman_router_strong_share", "Share of the recent window routed to the strongest tier",
                     ["group", "tenant"])
STRONG_TARGET = Gauge("ferryman_router_strong_share_target", "Strongest-tier share the tenant's target asks for",
                      ["group", "tenant"])
# Its _count is the feedback count, _sum / _count the mean; group "" is feedback on a request that named a model.
FEEDBACK = Histogram("ferryman_feedback_score", "Tenant feedback on answers (0..1)", ["group", "tenant"],
                     buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
FEEDBACK_QUALITY = Gauge("ferryman_router_feedback_quality", "Mean feedback score over the recent window",
                         ["group", "tenant"])
