"""`ferryman` command line: serve the gateway, and the operator's tools."""
from __future__ import annotations

import logging
import secrets

import typer

from classifier.cli import router_app
from gateway import cli_admin
from gateway.config import Settings

app = typer.Typer(help="Ferryman: a cost-aware LLM serving gateway.", no_args_is_help=True)
cli_admin.install(app)
app.add_typer(router_app, name="router")


@app.command()
def serve(host: str = typer.Option(None, help="Bind address (default from settings: 127.0.0.1)"),
          port: int = typer.Option(None, help="Port (default 8000)")) -> None:
    """Start the gateway with the embedded defaults: SQLite ledger, in-process engines, bundled router."""
    import uvicorn

    from gateway.app import create_app

    _logging()
    settings = Settings()
    settings.host, settings.port = host or settings.host, port or settings.port
    settings.admin_key = settings.admin_key or "fm-admin-" + secrets.token_urlsafe(24)
    demo_key = _demo_key(settings)
    app = create_app(settings, on_ready=lambda: _banner(settings, demo_key))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _demo_key(settings: Settings) -> str:
    """A fresh key for the demo tenant, so the printed curl works; older demo keys are revoked."""
    from billing import Billing

    billing = Billing(settings.database_url)
    billing.create_schema()
    billing.ensure_admin_defaults()
    return billing.issue_demo_key()


def _banner(settings: Settings, demo_key: str) -> None:
    url = f"http://{settings.host}:{settings.port}"
    typer.echo(f"""
Ferryman gateway on {url}
  admin page:            {url}/admin   (sign in with the admin key)
  admin key (this run):  {settings.admin_key}
  demo tenant API key:   {demo_key}

Try it:
  curl {url}/v1/chat/completions \\
    -H "Authorization: Bearer {demo_key}" -H "Content-Type: application/json" \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "reverse: s h i p"}}], "temperature": 0, "max_tokens": 16}}' -i
""")


engine_app = typer.Typer(help="Run an engine replica as its own OpenAI-compatible server.")
app.add_typer(engine_app, name="engine")


@engine_app.command("serve")
def engine_serve(model: str = typer.Option(..., help="Path to an HF Llama checkpoint"),
                 name: str = typer.Option(..., help="Model name the replica answers to"),
                 host: str = "127.0.0.1", port: int = 8100,
                 quantization: str = typer.Option(None, help="int8 | int4 weight-only quantization on load")) -> None:
    """Serve one engine replica; point the gateway at replicas with FERRYMAN_LARGE_UPSTREAMS."""
    import uvicorn

    from backends.engine import EngineBackend, EngineConfig
    from backends.server import create_replica_app

    _logging()
    backend = EngineBackend(name, EngineConfig(model=model, name=name, quantization=quantization))
    uvicorn.run(create_replica_app(backend, backend.tokenizer), host=host, port=port, log_level="warning")
