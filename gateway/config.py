"""All settings in one place. Every field can be set by an environment variable FERRYMAN_<NAME>."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from billing.db import Deadlines
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRYMAN_")

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = f"sqlite:///{ROOT / 'ferryman.db'}"
    redis_url: str | None = None  # set to share rate limits and budget holds across gateway replicas
    redis_prefix: str = "ferryman"  # of every Redis key, so several deployments (or tests) can share one Redis
    # While Redis is down: "closed" refuses requests with 503 + Retry-After; "local" falls back to per-process limits.
    redis_outage: Literal["closed", "local"] = "closed"
    # Deadlines on every dependency (billing/db.py Deadlines): past one, the request gets 503 + Retry-After.
    redis_timeout_s: float = Field(2.0, gt=0)  # Redis connect, and each answer
    # After Redis lost its data: holds refused this long, while every replica re-holds its requests in flight.
    redis_recovery_s: float = Field(3.0, ge=0)
    db_connect_timeout_s: float = Field(3.0, ge=2)  # PostgreSQL connect (TCP, TLS, authentication)
    db_statement_timeout_s: float = Field(5.0, gt=0)  # PostgreSQL's own statement and idle-in-transaction timeouts
    db_pool_timeout_s: float = Field(3.0, gt=0)  # waiting for a pooled connection
    db_deadline_s: float = Field(8.0, gt=0)  # client-side: a connection used longer than this is cut (stalled path)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)  # larger request bodies get 413 before they are read
    # Per-request limits, checked before the body is validated (gateway/bodies.py); over one: 400 naming it.
    max_messages: int = Field(2048, ge=1)  # chat messages (OpenAI's own limit)
    max_content_parts: int = Field(2048, ge=1)  # content parts across all messages
    max_prompt_token_ids: int = Field(131_072, ge=1)  # a /v1/completions prompt given as token ids
    # HTTP limits below the app (gateway/http_limits.py); over one: an OpenAI error object, then the connection closes.
    max_request_line_bytes: int = Field(8 * 1024, ge=256)  # method, URL and version: else 414
    max_header_bytes: int = Field(32 * 1024, ge=1024)  # all headers together: else 431
    max_headers: int = Field(100, ge=8)  # how many headers: else 431
    request_timeout_s: float = Field(60.0, gt=0)  # a whole request (head and body) must arrive in this time: else 408
    keep_alive_timeout_s: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    max_connections_per_client: int = Field(256, ge=0)  # open connections per client address and process; 0: no cap
    # Refusals before any work (401, 400, 404, 413...) past a burst per sender are answered late (gateway/tarpit.py).
    refusal_burst: int = Field(10, ge=1)  # refusals a sender (tenant, else client address) may have at once
    refusals_per_s: float = Field(1.0, gt=0)  # the burst refills at this rate
    refusal_delay_s: float = Field(1.0, ge=0)  # past it, each refusal waits this long before it is sent; 0: never
    shutdown_grace_s: float = Field(30.0, ge=0)  # on SIGTERM, how long requests in flight may take to finish
    # While requests are in flight, the event loop polls instead of sleeping (gateway/drain.py): less latency after
    # each upstream wait on hosts that wake an idle CPU slowly, for a core's worth of CPU per process meanwhile. For a
    # gateway in front of remote upstreams; in-process engines want that core for themselves.
    busy_poll: bool = False
    admin_key: str | None = None  # the bootstrap admin; unset: `serve` mints one into the ledger once and prints it
    # /metrics answers the admin key, or this key (give the monitoring its own, so it holds no admin rights).
    metrics_key: str | None = None
    metrics_tenants: bool = False  # per-tenant series (router share, feedback) on /metrics, labelled by tenant name
    # Budget alerts are POSTed here as Slack-compatible JSON (gateway/alerts.py); None: page and /admin/alerts only.
    alert_webhook_url: str | None = None
    alert_poll_s: float = Field(5.0, gt=0)  # how often each gateway looks for alerts to send
    log_format: Literal["text", "json"] = "text"  # json: one object a line, access-log fields as keys
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # info: an access-log line per request
    # OpenTelemetry traces are sent here over OTLP/HTTP (e.g. http://collector:4318/v1/traces); None: no tracing
    otlp_endpoint: str | None = None

    # The model catalog (gateway/catalog.py); None = the embedded default: the bundled pair, which the settings
    # below shape (paths, replicas, quantization, speculation, scale-to-zero, cascade).
    config: Path | None = None
    small_model_path: Path = ROOT / "models" / "small"
    large_model_path: Path = ROOT / "models" / "large"
    # `ferryman engine serve` replicas of the large model (comma-separated base URLs); empty = in-process engine.
    large_upstreams: str = ""
    large_quantization: str | None = None  # "int8" | "int4": quantize the in-process large engine's weights on load
    large_speculation: str | None = None  # "draft" (the small model drafts) | "ngram" | None: speculative decoding
    idle_unload_s: float | None = None  # scale-to-zero: unload an in-process model idle this long; None = keep loaded

    default_max_tokens: int = 256
    cascade: bool = False  # embedded default: `auto` answers with the small model first, escalates when unsure

    def deadlines(self) -> Deadlines:
        return Deadlines(self.db_connect_timeout_s, self.db_statement_timeout_s, self.db_pool_timeout_s,
                         self.db_deadline_s)

    @field_validator("cascade", mode="before")
    @classmethod
    def _cascade_words(cls, v):
        # README's spelling: FERRYMAN_CASCADE=auto turns the cascade on, off (the default) leaves the router.
        return {"auto": True, "off": False}.get(v.strip().lower(), v) if isinstance(v, str) else v
    router_path: Path | None = None  # None = the bundled classifier artifact
