"""The FastAPI application. The lifespan owns every component; tests inject their own."""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import admin, admin_ui, errors, openai_api
from gateway.config import Settings
from gateway.ferry import Ferry

log = logging.getLogger("ferryman")


def create_app(settings: Settings | None = None, *, billing=None, limiter=None, router=None,
               backends: dict | None = None, tokenizer=None, on_ready=None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ferry = build_ferry(settings, billing, limiter, router, backends, tokenizer)
        for backend in ferry.backends.values():
            await backend.start()
        app.state.ferry = ferry
        if on_ready:
            on_ready()
        reaper = asyncio.create_task(reap_forever(ferry.billing))
        yield
        reaper.cancel()
        for backend in ferry.backends.values():
            await backend.stop()
        if hasattr(ferry.limiter, "close"):  # the Redis limiter holds a connection pool
            await ferry.limiter.close()

    app = FastAPI(title="Ferryman", lifespan=lifespan)
    app.state.settings = settings
    app.add_exception_handler(errors.APIError, errors.handle_api_error)
    app.add_exception_handler(RequestValidationError, errors.handle_validation_error)
    app.add_exception_handler(Exception, errors.handle_unexpected)
    app.include_router(openai_api.router)
    app.include_router(admin.router)
    app.include_router(admin_ui.router)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def reap_forever(billing, every_s: float = 60.0) -> None:
    """Release budget holds left by a replica that died mid-request; safe to run on every replica at once."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(billing.reap_expired)
        except Exception:  # a database hiccup must not end the loop: the next round retries
            log.exception("reaping expired reservations failed")


def build_ferry(settings: Settings, billing=None, limiter=None, router=None, backends=None, tokenizer=None) -> Ferry:
    """Defaults for whatever was not injected: SQLite ledger, in-process limits and engines, bundled router."""
    from billing import Billing, RateLimiter

    if billing is None:
        billing = Billing(settings.database_url)
        billing.create_schema()
        billing.ensure_admin_defaults()
    limiter = limiter or RateLimiter.from_url(settings.redis_url)
    if router is None:
        from classifier import Router

        router = Router.load(settings.router_path) if settings.router_path else Router.load()
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(settings.large_model_path)
    backends = backends or default_backends(settings)
    return Ferry(settings, billing, limiter, router, backends, tokenizer, context_length(settings))


def default_backends(settings: Settings) -> dict:
    backends = {settings.small_model: _engine(settings, settings.small_model, settings.small_model_path)}
    if settings.large_upstreams:
        from backends.remote import RemoteBackend

        urls = [u.strip() for u in settings.large_upstreams.split(",") if u.strip()]
        backends[settings.large_model] = RemoteBackend(settings.large_model, urls)
    else:
        speculation = {"speculative_method": settings.large_speculation,
                       "speculative_model": str(settings.small_model_path) if settings.large_speculation == "draft" else None}
        backends[settings.large_model] = _engine(settings, settings.large_model, settings.large_model_path,
                                                 quantization=settings.large_quantization, **speculation)
    return backends


def _engine(settings: Settings, name: str, path, **options):
    """An in-process engine; with idle_unload_s set it loads on first use and unloads when idle."""
    from backends.engine import EngineBackend, EngineConfig

    def load():
        log.info("loading %s from %s", name, path)
        return EngineBackend(name, EngineConfig(model=str(path), name=name, **options))

    if settings.idle_unload_s is None:
        return load()
    from backends.idle import ScaleToZero

    return ScaleToZero(name, load, settings.idle_unload_s)


def context_length(settings: Settings) -> int:
    config = settings.large_model_path / "config.json"
    if config.exists():
        return int(json.loads(config.read_text()).get("max_position_embeddings", 2048))
    return 2048
