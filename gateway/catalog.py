"""The model catalog: which models the gateway serves, what they cost, and how requests are routed among them.

One YAML file (`ferryman serve --config FILE`, or FERRYMAN_CONFIG), validated at start; without one, the embedded
default is the bundled pair with the route `auto`. Secrets never live here: an upstream names the environment
variable that holds its API key (`api_key_env`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from classifier.router import SHIPPED
from gateway.config import Settings
from gateway.policies import POLICIES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silently ignored setting


class Price(Strict):
    """USD per 1M tokens; and for an engine model, optionally USD per GPU-hour."""

    input: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)  # None = the input price
    output: float = Field(ge=0)
    # Set: requests are billed by the GPU-seconds the engine attributes to them, at this price per GPU-hour. The
    # per-token prices above still bound each request's hold (its worst case), so a budget is never overspent.
    gpu_hour: float | None = Field(None, ge=0)

    def per_million(self) -> dict[str, float]:
        cached = self.input if self.cached_input is None else self.cached_input
        prices = {"input": self.input, "cached_input": cached, "output": self.output}
        return prices if self.gpu_hour is None else {**prices, "gpu_hour": self.gpu_hour}


class Defaults(Strict):
    """Sampling parameters a model gets when the request omits them (an upstream otherwise keeps its own)."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = None


class ModelEntry(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")
    price: Price | None = None  # None: the price table keeps what an operator set
    context_length: int | None = Field(None, ge=16)
    max_concurrency: int | None = Field(None, ge=1)  # requests in flight at once; more wait
    timeout_s: float = Field(120.0, gt=0)  # the whole request
    connect_timeout_s: float = Field(5.0, gt=0)
    # A remote model (openai, replicas) that sends no first token in this long has failed this request (it goes
    # to the group's next tier) and counts against the model's circuit breaker. A whole (non-streamed) answer's
    # first byte comes with the answer: it is bounded by timeout_s and the health probes.
    first_token_timeout_s: float = Field(30.0, gt=0)
    vision: bool = False  # accepts image parts
    tokenizer: Path | None = None  # an HF tokenizer directory: counts (openai) or renders (replicas) prompts
    defaults: Defaults = Defaults()
    # A request that names no max_tokens may generate this many (an upstream is sent it as max_tokens); it bounds
    # the budget hold. None: FERRYMAN_DEFAULT_MAX_TOKENS bounds the hold and an upstream keeps its own limit.
    max_output_tokens: int | None = Field(None, ge=1)


class EngineEntry(ModelEntry):
    """Our in-process engine on an HF checkpoint directory, with the checkpoint's own tokenizer and template."""

    kind: Literal["engine"]
    path: Path
    quantization: Literal["int8", "int4"] | None = None
    speculation: str | None = None  # "ngram", or the name of another engine entry that drafts
    idle_unload_s: float | None = Field(None, gt=0)  # scale-to-zero: unload after this long idle
    tenant_weights: dict[str, Annotated[int, Field(ge=1, le=1000)]] = {}  # tenant name -> its weight in the fair share of seats (default 1)


class ReplicasEntry(ModelEntry):
    """`ferryman engine serve` processes: token-id prompts, mid-stream continuation, health checks, breaker."""

    kind: Literal["replicas"]
    urls: list[str] = Field(min_length=1)
    tokenizer: Path  # the checkpoint's tokenizer: the gateway renders prompts for token-id replicas
    inter_token_timeout_s: float = Field(5.0, gt=0)  # silent this long mid-stream: hung, continue on another
    tenant_weights: dict[str, Annotated[int, Field(ge=1, le=1000)]] = {}  # as EngineEntry's, sent with each request


class OpenAIEntry(ModelEntry):
    """Any OpenAI-compatible server: messages go as messages, text comes back as text."""

    kind: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None  # the environment variable holding the key; never the key itself
    upstream_model: str | None = None  # the name the upstream knows the model by; default: `name`
    # Probed with a GET this often (relative to base_url; null: no probes): no answer or 5xx marks the model
    # down, 401/403 marks its key refused, until a probe gets through.
    health_path: str | None = "/models"
    health_interval_s: float = Field(2.0, gt=0)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


Entry = Annotated[EngineEntry | ReplicasEntry | OpenAIEntry, Field(discriminator="kind")]


class RouteGroup(Strict):
    """Named group of models and the policy that chooses among them. Each list means one thing whatever the
    policy: `tiers` run from cheapest to strongest (the last is the strongest, the savings baseline); `fallbacks`
    is an order of preference."""

    name: str = Field(min_length=1)
    # one of gateway/policies' POLICIES: router: the router's difficulty score picks a tier; cascade: the cheapest
    # answers first and a low-confidence answer is escalated to the strongest; pinned: its one tier, never
    # another; fallback: the first of `fallbacks` that is available.
    policy: str = "router"
    tiers: list[str] = []  # cheapest to strongest (router, cascade); the one model (pinned); none (fallback)
    # Who serves when the chosen model is unavailable before its first token: true = the other tiers, nearest
    # first; false = nobody; a list = those models in that order (for `fallback`, the whole group).
    fallbacks: bool | list[str] = True
    # the router artifact that scores the group's prompts: `general` (real prompts of a real strong/weak pair),
    # `bundled` (the bundled pair's own), or a path to one `ferryman router train` wrote; None: `general`
    # (`bundled` for a cascade: the policy's `default_router`)
    router: str | None = None
    # a prompt unlike the router's training prompts goes to the strongest or the cheapest tier, or by its score
    unfamiliar: Literal["strongest", "cheapest", "score"] = "score"

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, policy: str) -> str:
        if policy not in POLICIES:
            raise ValueError(f"expected {', '.join(map(repr, POLICIES))}, got {policy!r}")
        return policy

    def misfit(self) -> tuple[str, str] | None:
        """(key, problem) when the lists do not fit the policy."""
        return POLICIES[self.policy].misfit(self)

    def strongest(self) -> str | None:
        """The tier savings are counted against; None where the policy never chooses a cheaper tier to save."""
        return self.tiers[-1] if POLICIES[self.policy].saves else None


class Catalog(Strict):
    models: list[Entry] = Field(min_length=1)
    routes: list[RouteGroup] = []
    # Texts (say a shared system prompt) whose prefix-cache blocks every tenant shares; the rest of every prompt
    # is cached per tenant (gateway/public_prefixes.py).
    public_prefixes: list[str] = []

    @model_validator(mode="after")
    def _names_resolve(self) -> Catalog:
        names = [m.name for m in self.models]
        if dup := next((n for n in names if names.count(n) > 1), None):
            raise ValueError(f"models: the name {dup!r} is used twice")
        for i, group in enumerate(self.routes):
            if group.name in names:
                raise ValueError(f"routes[{i}].name: {group.name!r} is already a model's name")
            if misfit := group.misfit():
                raise ValueError(f"routes[{i}].{misfit[0]}: {misfit[1]}")
            for field in ("tiers", "fallbacks"):
                listed = getattr(group, field)
                if missing := [t for t in (listed if isinstance(listed, list) else []) if t not in names]:
                    raise ValueError(f"routes[{i}].{field}: no model named {missing[0]!r} in models")
            if pair := self._cheaper_later(group.tiers):
                raise ValueError(f"routes[{i}].tiers: {pair[1]!r} costs less than {pair[0]!r} before it; tiers run "
                                 f"from cheapest to strongest (an order of preference goes in fallbacks)")
            if group.router not in (None, *SHIPPED) and not Path(group.router).is_file():
                raise ValueError(f"routes[{i}].router: expected {' or '.join(SHIPPED)} or the path of a router "
                                 f"artifact, got {group.router!r} (no such file)")
        for i, m in enumerate(self.models):
            if isinstance(m, EngineEntry) and m.speculation not in (None, "ngram") and not self._is_engine(m.speculation):
                raise ValueError(f"models[{i}].speculation: expected 'ngram' or the name of an engine model, "
                                 f"got {m.speculation!r}")
            if m.price and m.price.gpu_hour is not None and not isinstance(m, EngineEntry):
                raise ValueError(f"models[{i}].price.gpu_hour: only an engine model measures the GPU time it uses; "
                                 f"price {m.name!r} per token")
            if isinstance(m, OpenAIEntry) and m.api_key_env and m.api_key_env not in os.environ:
                raise ValueError(f"models[{i}].api_key_env: the environment variable {m.api_key_env} is not set")
        return self

    def _cheaper_later(self, tiers: list[str]) -> tuple[str, str] | None:
        """Two tiers out of order: a later one priced below an earlier one for input and output alike."""
        priced = [(n, self.model(n).price) for n in tiers if self.model(n).price is not None]
        for i, (early, a) in enumerate(priced):
            for later, b in priced[i + 1:]:
                if b.input < a.input and b.output < a.output:
                    return early, later
        return None

    def _is_engine(self, name: str) -> bool:
        return any(m.name == name and isinstance(m, EngineEntry) for m in self.models)

    def model(self, name: str) -> Entry:
        return next(m for m in self.models if m.name == name)

    def route(self, name: str) -> RouteGroup | None:
        return next((g for g in self.routes if g.name == name), None)

    def prices(self) -> dict[str, dict[str, float]]:
        return {m.name: m.price.per_million() for m in self.models if m.price is not None}


class CatalogError(Exception):
    """A catalog file that cannot be served: the message is one line naming the key and the problem."""


def load(path: Path) -> Catalog:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: {' '.join(str(exc).split())}") from None
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{path}: {_one_line(exc)}") from None


def _one_line(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key, message = _key(err["loc"]), err["msg"].removeprefix("Value error, ")
        if key.endswith("api_key") and err["type"] == "extra_forbidden":
            message = "keys never go in the file: name the environment variable that holds it with api_key_env"
        problems.append(f"{key}: {message}" if key else message)
    return "; ".join(problems)


def _key(loc: tuple) -> str:
    """models[1].price.input, as the file spells it (pydantic puts the entry's kind into the path)."""
    key = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            key += f"[{part}]"
        elif not (i and isinstance(loc[i - 1], int) and part in ("engine", "replicas", "openai")):
            key += f".{part}" if key else str(part)
    return key


def embedded(settings: Settings) -> Catalog:
    """The bundled pair and the route `auto` with the bundled router; the old FERRYMAN_LARGE_* settings apply."""
    small = {"name": "ferryman-small", "kind": "engine", "path": settings.small_model_path,
             "idle_unload_s": settings.idle_unload_s}
    large = {"name": "ferryman-large", "kind": "engine", "path": settings.large_model_path,
             "quantization": settings.large_quantization, "idle_unload_s": settings.idle_unload_s,
             "speculation": "ferryman-small" if settings.large_speculation == "draft" else settings.large_speculation}
    if settings.large_upstreams:
        urls = [u.strip() for u in settings.large_upstreams.split(",") if u.strip()]
        large = {"name": "ferryman-large", "kind": "replicas", "urls": urls, "tokenizer": settings.large_model_path}
    policy = "cascade" if settings.cascade else "router"
    auto = {"name": "auto", "tiers": ["ferryman-small", "ferryman-large"], "policy": policy,
            "router": str(settings.router_path or "bundled")}
    return Catalog.model_validate({"models": [small, large], "routes": [auto]})


def from_settings(settings: Settings) -> Catalog:
    """The file's catalog, else the embedded one; FERRYMAN_ROUTER_PATH stands in for a group's unset `router`."""
    if not settings.config:
        return embedded(settings)
    catalog = load(settings.config)
    for group in catalog.routes:
        group.router = group.router or (str(settings.router_path) if settings.router_path else None)
    return catalog
