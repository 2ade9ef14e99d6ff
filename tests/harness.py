"""The one way tests wire a gateway and start processes: a free loopback port, a wait for /health, and the
gateway app with real billing (its own database), a limiter, echo backends and a transparent router unless the
test says otherwise."""
from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass

import httpx

from backends.echo import EchoBackend
from billing import Billing
from gateway.app import create_app
from gateway.config import Settings
from tests.util import LengthRouter

ADMIN_KEY = "fm-admin-test-key"
ECHO_MODELS = ("ferryman-small", "ferryman-large")
LENGTH_ROUTER = object()  # the default: tests.util.LengthRouter; pass router=None for the catalog's own routes


def free_port() -> int:
    """A loopback port nothing listens on now (the socket is closed again: the next server to start binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    """Until url's /health answers 200; fails at once if the process exits first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, f"{url} exited during start-up"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(url)


def echo_backends(decode=None, delay_s: float = 0.0, names=ECHO_MODELS) -> dict:
    """Instant (or delay_s per token) echo backends: the tests measure the gateway, not a model."""
    return {name: EchoBackend(name, decode, delay_s) if decode else EchoBackend(name, delay_s=delay_s) for name in names}


@dataclass
class Wiring:
    app: object
    billing: Billing
    settings: Settings
    backends: dict | None

    def tenant(self, name: str = "acme", **limits) -> tuple[int, str]:
        """A new tenant and an API key for it: (tenant id, key)."""
        tenant = self.billing.create_tenant(name, **limits)
        return tenant["id"], self.billing.create_key(tenant["id"], "test")[0]


def gateway_app(database_url: str, *, tokenizer=None, backends: dict | None = None, router=LENGTH_ROUTER,
                limiter=None, catalog=None, billing: Billing | None = None, redis_url: str | None = None,
                redis_prefix: str = "ferryman", tracer_provider=None, admin_key: str = ADMIN_KEY,
                **settings) -> Wiring:
    """The gateway app over its own Billing on database_url (schema and default prices made). Without `backends`
    or a `catalog`, echo backends decoding with the tokenizer; without a limiter, the app's own (local, or Redis's
    with settings' redis_url); `settings` are Settings fields."""
    config = Settings(database_url=database_url, admin_key=admin_key, **settings)
    billing = billing or Billing(database_url, redis_url=redis_url, redis_prefix=redis_prefix)
    billing.create_schema()
    billing.ensure_admin_defaults()
    if backends is None and catalog is None:
        backends = echo_backends(tokenizer.decode if tokenizer is not None else None)
    app = create_app(config, billing=billing, limiter=limiter, backends=backends, catalog=catalog,
                     router=LengthRouter() if router is LENGTH_ROUTER else router, tokenizer=tokenizer,
                     tracer_provider=tracer_provider)
    return Wiring(app, billing, config, backends)
