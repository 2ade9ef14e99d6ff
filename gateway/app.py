"""The FastAPI application. The lifespan owns every component; tests inject their own."""
from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import api, api_docs, errors, tracing
from gateway.api.completions import BODIES, SERVED, documented
from gateway.alerts import send_forever
from gateway.bodies import Limits, Parser
from gateway.catalog import Catalog, from_settings
from gateway.config import Settings
from gateway.drain import Drain
from gateway.ferry import Ferry
from gateway.served import served_model
from gateway.shared_limits import RedisOutagePolicy
from gateway.tarpit import Tarpit
from gateway.logs import AccessLog
from gateway.middleware import BodyLimit, DrainGate

log = logging.getLogger("ferryman")


def create_app(settings: Settings | None = None, *, billing=None, limiter=None, router=None,
               backends: dict | None = None, tokenizer=None, catalog: Catalog | None = None,
               on_ready=None, tracer_provider=None) -> FastAPI:
    """tracer_provider: an OpenTelemetry SDK provider (tests: an in-memory exporter's); None: the one
    FERRYMAN_OTLP_ENDPOINT asks for, or none (tracing off)."""
    settings = settings or Settings()
    made_provider = None if tracer_provider else tracing.provider(settings.otlp_endpoint)
    tracer = tracing.tracer(tracer_provider or made_provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ferry = build_ferry(settings, billing, limiter, router, backends, tokenizer, catalog, tracer, app.state.drain)
        for backend in ferry.backends.values():
            await backend.start()
        app.state.ferry = ferry
        if on_ready:
            on_ready()
        reaper = asyncio.create_task(reap_forever(ferry.billing))
        alerts = (asyncio.create_task(send_forever(ferry.billing, settings.alert_webhook_url, settings.alert_poll_s))
                  if settings.alert_webhook_url else None)
        writer = ferry.billing.writer() if getattr(ferry.billing, "holds_in_redis", False) else None
        if writer:
            writer.start()
        # What is loaded by now (libraries, models, tokenizers) lives as long as the process: frozen out of the
        # collector's sight, a full collection no longer walks it, which had paused every request ~150 ms.
        gc.freeze()
        yield
        gc.unfreeze()  # collectable again at exit (and for the next app a test process makes)
        reaper.cancel()
        if alerts:
            alerts.cancel()
        if writer:  # what this process settled reaches the database before it exits
            await asyncio.to_thread(writer.stop)
        for backend in ferry.backends.values():
            await backend.stop()
        app.state.bodies.close()
        await ferry.limiter.close()  # the Redis limiter holds a connection pool
        if made_provider:  # the last spans reach the collector
            await asyncio.to_thread(made_provider.shutdown)

    # /docs serves Swagger UI from the fastapi-offline package's files, so it works offline (no CDN).
    app = FastAPI(title="Ferryman", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.drain = Drain(settings.shutdown_grace_s, settings.busy_poll)
    app.state.tarpit = Tarpit(settings.refusals_per_s, settings.refusal_burst, settings.refusal_delay_s)
    app.state.bodies = Parser(Limits(settings.max_messages, settings.max_content_parts, settings.max_prompt_token_ids))
    errors.install(app)
    app.add_middleware(DrainGate, drain=app.state.drain)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(tracing.Traced, tracer=tracer)  # the request's span; its trace id goes to the access log
    app.add_middleware(AccessLog)  # outermost: refusals of the guards above are logged too
    for path, endpoint in SERVED.items():  # first: the routes every tenant request takes are matched first
        app.add_route(path, endpoint, methods=["POST"], include_in_schema=False)
    for routes in api.ROUTERS:
        app.include_router(routes)
    api_docs.install(app, BODIES, documented.routes)

    return app


async def reap_forever(billing, every_s: float = 60.0) -> None:
    """Release budget holds left by a replica that died mid-request; safe to run on every replica at once."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await billing.ledger.reap()
        except Exception:  # a database hiccup must not end the loop: the next round retries
            log.exception("reaping expired reservations failed")


def build_ferry(settings: Settings, billing=None, limiter=None, router=None, backends=None, tokenizer=None,
                catalog: Catalog | None = None, tracer=tracing.NOOP, drain: Drain | None = None) -> Ferry:
    """Defaults for whatever was not injected: SQLite ledger, in-process limits, the catalog's models (the file, else
    the embedded bundled pair), each route group's own router (an injected one stands in for all). An injected
    backend or tokenizer stands in for the catalog's."""
    from billing import Billing, RateLimiter
    from billing.redis_limits import RedisRateLimiter

    if billing is None:
        billing = Billing(settings.database_url, redis_url=settings.redis_url, redis_prefix=settings.redis_prefix,
                          deadlines=settings.deadlines(), redis_timeout_s=settings.redis_timeout_s,
                          recovery_s=settings.redis_recovery_s)
        billing.create_schema()
        billing.ensure_admin_defaults()
    if limiter is None and settings.redis_url:
        limiter = RedisOutagePolicy(RedisRateLimiter(settings.redis_url, settings.redis_prefix,
                                                     timeout_s=settings.redis_timeout_s),
                                    settings.redis_outage)
    limiter = limiter or RateLimiter()
    catalog = catalog or from_settings(settings)
    if prices := catalog.prices():  # the file's prices; models it leaves unpriced keep the operator's
        billing.set_prices_from_catalog(prices)
    injected = backends or {}
    models = {e.name: served_model(e, catalog, injected.get(e.name), tokenizer) for e in catalog.models}
    return Ferry(settings, billing, limiter, router, models, catalog, tracer, drain)
