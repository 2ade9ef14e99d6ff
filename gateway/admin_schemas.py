"""The bodies in and out of the gateway's own API: the admin routes, `/v1/usage` and `/v1/feedback` (Base -> Create /
Update / Public, as in FastAPI's full-stack template), apart from the routes that use them (gateway/api/). OpenAI's
request bodies are gateway/schemas.py's."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from billing.admins import ROLES
from billing.operators import MAX_ALERTS, MAX_ID, MAX_LIMIT, MAX_MICROS

Count = Annotated[int | None, Field(ge=1, le=MAX_LIMIT)]
Share = Annotated[float | None, Field(ge=0.0, le=1.0)]
Micros = Annotated[int, Field(ge=0, le=MAX_MICROS)]
Percent = Annotated[int, Field(ge=1, le=100)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Priority = Literal["interactive", "standard", "batch"]
Role = Literal[ROLES]


# --- tenants ---------------------------------------------------------------------------------------

class TenantBase(BaseModel):
    priority: Priority = "standard"
    quality_floor: Share = None
    large_share: Share = None
    rpm: Count = None
    tpm: Count = None
    max_concurrent: Count = None
    allowed_models: list[Name] | None = None  # model and route group names; None: every one
    store_prompts: bool = False  # keep this tenant's prompts for router training (off unless it opts in)
    internal: bool = False  # our own use, not a customer: reported apart, never among the top tenants


class TenantCreate(TenantBase):
    name: Name


class TenantUpdate(TenantBase):
    priority: Priority | None = None
    store_prompts: bool | None = None
    internal: bool | None = None


class TenantPublic(TenantBase):
    id: int
    name: str
    created_at: datetime


# --- keys ------------------------------------------------------------------------------------------

class KeyBase(BaseModel):
    expires_at: datetime | None = None
    rpm: Count = None
    tpm: Count = None
    max_concurrent: Count = None


class KeyCreate(KeyBase):
    name: Name = "default"


class KeyUpdate(KeyBase):
    pass


class KeyPublic(KeyBase):
    id: int
    tenant_id: int
    name: str
    key_prefix: str  # shown to tell keys apart; the secret itself is never kept
    revoked_at: datetime | None
    created_at: datetime


class KeyCreated(KeyPublic):
    key: str  # the secret: in this answer only


# --- budgets, alerts, prices -------------------------------------------------------------------------

class BudgetBase(BaseModel):
    period: Literal["daily", "monthly"] = "monthly"
    limit_micros: Micros
    # Alert when spend reaches each of these percents of the limit, once per period each; []: no alerts.
    alert_percents: list[Percent] = Field([80], max_length=MAX_ALERTS)


class BudgetSet(BudgetBase):
    model_config = ConfigDict(extra="forbid")  # a misspelt field (or the old `alert_percent`) is a 400, not ignored
    tenant_id: int = Field(ge=1, le=MAX_ID)
    key_id: int | None = Field(None, ge=1, le=MAX_ID)  # None: the tenant's budget, shared by all its keys


class BudgetPublic(BudgetBase):
    id: int
    tenant_id: int
    key_id: int | None
    created_at: datetime
    period_key: str  # the current period: "2026-11-30" or "2026-11"
    spent_micros: int
    reserved_micros: int  # held by requests in flight
    remaining_micros: int


class AlertPublic(BaseModel):
    id: int
    budget_id: int
    tenant_id: int
    tenant: str
    key_id: int | None
    period_key: str
    spent_micros: int
    limit_micros: int
    alert_percent: int  # the threshold (of the budget's alert_percents) this alert is for
    created_at: datetime
    sent_at: datetime | None  # delivered to the alert webhook; None: not (yet), or no webhook set


class PriceBase(BaseModel):
    input_micros_per_m: Micros
    cached_input_micros_per_m: Micros
    output_micros_per_m: Micros
    # Set (engine models): billed per attributed GPU-second at this micro-USD per GPU-hour, never past the per-token
    # hold; null: billed per token; left out of a PUT: as it was.
    gpu_hour_micros: Micros | None = None


class PriceSet(PriceBase):
    pass


class PricePublic(PriceBase):
    model: str
    updated_at: datetime


# --- usage and reports -------------------------------------------------------------------------------

class UsageRecordPublic(BaseModel):
    id: int
    request_id: str
    tenant_id: int
    key_id: int
    model: str
    route: str | None
    route_group: str | None
    difficulty: float | None
    status: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_micros: int
    baseline_cost_micros: int | None  # at the route group's strongest tier; None: no group to compare with
    estimated: bool  # token counts estimated (the upstream reported none)
    gpu_seconds: float | None
    token_cost_micros: int | None  # at the per-token prices (cost_micros is what was billed)
    gpu_cost_micros: int | None  # at the GPU-hour price; None: the model has none
    latency_ms: float | None
    feedback_score: float | None
    feedback_comment: str | None
    prompt_text: str | None  # only for tenants that opted in
    day: str
    created_at: datetime


class ReportTotals(BaseModel):
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_micros: int
    baseline_cost_micros: int
    savings_micros: int
    token_cost_micros: int  # the same records at the per-token prices
    gpu_cost_micros: int | None  # the records with a GPU-hour price, at it; None: none has one
    gpu_seconds: float


class UsageReport(BaseModel):
    group_by: list[str]
    since: str | None
    until: str | None
    rows: list[dict]  # the group columns asked for, then ReportTotals' columns
    totals: ReportTotals


class OwnUsage(BaseModel):
    tenant: str
    budgets: list[BudgetPublic]
    report: list[dict]
    totals: ReportTotals
    records: list[UsageRecordPublic]




# --- the admin page's summaries -------------------------------------------------------------------

class SpendRow(BaseModel):
    tenant_id: int
    tenant: str
    period: Literal["daily", "monthly"]
    since: str  # first day of the period
    requests: int
    cost_micros: int
    savings_micros: int  # against each record's own baseline
    internal: bool  # our own use, shown apart from customers
    budget: BudgetPublic | None


class EngineLive(BaseModel):
    model: str
    kv_cache_usage: float | None
    running: int
    waiting: int
    tokens_per_s: float | None


class LiveView(BaseModel):
    window_s: float
    requests_total: int
    requests_per_s: float | None
    p95_latency_s: float | None
    error_share: float | None
    engines: list[EngineLive]


# --- admin keys and the audit log -------------------------------------------------------------------

class Me(BaseModel):
    name: str  # the admin key's name; "env:FERRYMAN_ADMIN_KEY" for the bootstrap key
    role: str


class AdminKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role


class AdminKeyPublic(BaseModel):
    id: int
    name: str
    role: str
    key_prefix: str  # the secret itself is never kept
    created_at: datetime
    revoked_at: datetime | None


class AdminKeyCreated(AdminKeyPublic):
    key: str  # the secret: in this answer only


class AuditEntry(BaseModel):
    id: int
    created_at: datetime
    actor: str  # an admin key's name, "env:FERRYMAN_ADMIN_KEY", "cli:<user>" or "system:gateway"
    actor_role: str
    action: str  # "tenant.create", "key.revoke", "price.set", "admin_key.create", ...
    target: str  # "tenant:3", "price:ferryman-small", ...
    before: dict | None  # the fields that changed, as they were; null: created
    after: dict | None  # ... and as they became; null: deleted


class AuditPage(BaseModel):
    entries: list[AuditEntry]  # newest first
    next_before_id: int | None  # pass as before_id for the next (older) page; null: this is the last


# --- feedback and the routers --------------------------------------------------------------------------

class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=200, description="The x-request-id of the answer graded")
    score: float = Field(ge=0.0, le=1.0, description="How good the answer was: 0 useless, 1 perfect")
    comment: str | None = Field(None, max_length=4000)


class FeedbackResponse(BaseModel):
    object: str = "feedback"
    request_id: str
    score: float


class RouterTarget(BaseModel):
    group: str
    tenant_id: str
    target_share: float | None  # strongest-tier share the tenant's target asks for (a floor: feedback-corrected)
    realised_share: float | None  # over the window
    window: int  # scores in the window
    feedback_quality: float | None  # mean feedback score on the group's recent answers to the tenant
    feedback_count: int  # grades behind it


class RouterGroup(BaseModel):
    group: str
    policy: str
    router: str  # the artifact that scores the group's prompts: `general`, `bundled`, a path; `injected` in tests
    unfamiliar: str  # where a prompt unlike the router's training prompts goes: strongest, cheapest, score
    trained_on: list[str]  # the artifact's training files, as its meta records them ([] when it does not)
    examples: int | None  # labelled prompts it was trained on
