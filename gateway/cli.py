"""`ferryman` command line: serve the gateway, and the operator's tools."""
from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import pydantic
import sqlalchemy.exc
import typer
from pydantic_settings import SettingsError

from classifier.cli import router_app
from gateway import labeling, ledger_labels
from gateway import cli_admin, cli_plan
from gateway.config import Settings

class _Ferryman(typer.Typer):
    """An operator's mistake (a bad setting, a database that does not answer) is one line and exit 1,
    not a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except (pydantic.ValidationError, SettingsError) as exc:
            sys.exit(f"ferryman: bad setting: {_bad_setting(exc)}")
        except sqlalchemy.exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            sys.exit(f"ferryman: cannot use the database at {_masked(Settings().database_url)}: {reason}")


def _bad_setting(exc: Exception) -> str:
    if not isinstance(exc, pydantic.ValidationError):
        return str(exc)
    return "; ".join(f"FERRYMAN_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
                     for e in exc.errors())


def _masked(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "(an unparsable URL)"


app = _Ferryman(help="Ferryman: a cost-aware LLM serving gateway.", no_args_is_help=True)
cli_admin.install(app)
# the router's --from-ledger reads the ledger through the gateway: the classifier knows no database
app.add_typer(router_app, name="router", context_settings={"obj": {"ledger_labels": ledger_labels.for_training,
                                                                    "label": labeling.label}})
app.add_typer(cli_plan.plan_app, name="plan")


@app.command()
def serve(host: str = typer.Option(None, help="Bind address (default from settings: 127.0.0.1)"),
          port: int = typer.Option(None, help="Port (default 8000)"),
          config: Path = typer.Option(None, help="Model catalog YAML (default FERRYMAN_CONFIG, else the bundled pair)"),
          workers: int = typer.Option(1, min=1, help="Gateway processes on this port (needs Redis and a catalog "
                                      "without in-process engines; see gateway/workers.py)")
          ) -> None:
    """Start the gateway with the embedded defaults: SQLite ledger, in-process engines, bundled router.
    SIGTERM drains (FERRYMAN_SHUTDOWN_GRACE_S) and exits 0."""
    from gateway import catalog as catalogs
    from gateway import workers as workers_
    from gateway.app import create_app
    from gateway.drain import serve as serve_draining

    _logging()
    settings = Settings()
    settings.host, settings.port = host or settings.host, port or settings.port
    settings.config = config or settings.config
    try:
        catalog = catalogs.from_settings(settings)  # a bad file stops the start here, before anything loads
    except catalogs.CatalogError as exc:
        sys.exit(f"ferryman: bad model catalog: {exc}")
    if reason := workers_.refusal(settings, catalog, workers):
        sys.exit(f"ferryman: {reason}")
    if reason := _cannot_bind(settings.host, settings.port):  # before any model loads or a demo key is minted
        sys.exit(f"ferryman: cannot listen on {settings.host}:{settings.port}: {reason}")
    minted, demo_key = _start_keys(settings)
    if workers > 1:
        _banner(settings, minted, demo_key)
        return workers_.serve(settings, workers)
    app = create_app(settings, catalog=catalog, on_ready=lambda: _banner(settings, minted, demo_key))
    serve_draining(app, settings.host, settings.port)


def _logging() -> None:
    from gateway import logs

    settings = Settings()
    logs.setup(settings.log_format, settings.log_level)


def _cannot_bind(host: str, port: int) -> str | None:
    """Why the address cannot be bound (taken, not ours), or None. uvicorn binds it again moments later."""
    try:
        with socket.create_server((host, port)):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


config_app = typer.Typer(help="Check configuration files without starting anything.")
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(file: Path = typer.Argument(..., help="A model catalog YAML file")) -> None:
    """Validate a model catalog: every problem is listed (key and reason), exit 1 if there is any."""
    from gateway import catalog as catalogs

    try:
        catalog = catalogs.load(file)
    except catalogs.CatalogError as exc:
        sys.exit(f"ferryman: bad model catalog: {exc}")
    typer.echo(f"{file}: ok ({len(catalog.models)} models, {len(catalog.routes)} route groups)")


def _start_keys(settings: Settings) -> tuple[str | None, str]:
    """The bootstrap admin key if this start minted it (FERRYMAN_ADMIN_KEY unset and the ledger never had an admin
    key: later starts keep that one), and a fresh key for the demo tenant, so the printed curl works. The demo key
    expires after a week; other replicas' demo keys on a shared database keep working."""
    from billing import Billing

    billing = Billing(settings.database_url)
    billing.create_schema()
    billing.ensure_admin_defaults()
    minted = None if settings.admin_key else billing.admins.mint_bootstrap()
    return minted, billing.issue_demo_key()


def _banner(settings: Settings, minted: str | None, demo_key: str) -> None:
    url = f"http://{settings.host}:{settings.port}"
    # a key the operator set is theirs to know: never echoed to a terminal or a log
    admin = (f"{minted}   (new: shown this once, stored only as a hash)" if minted
             else "FERRYMAN_ADMIN_KEY" if settings.admin_key
             else "as printed at the first start (`ferryman admin-keys create NAME --role admin` issues another)")
    typer.echo(f"""
Ferryman gateway on {url}
  admin page:            {url}/admin   (sign in with an admin key)
  admin key:             {admin}
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
                 host: str = typer.Option("127.0.0.1", help="Bind address"),
                 port: int = typer.Option(8100, help="Port"),
                 quantization: str = typer.Option(None, help="int8 | int4 weight-only quantization on load"),
                 grace_s: float = typer.Option(30.0, help="On SIGTERM: seconds streams in flight may take to finish")) -> None:
    """Serve one engine replica; point the gateway at replicas with FERRYMAN_LARGE_UPSTREAMS."""
    from backends.engine import EngineBackend, EngineConfig
    from backends.server import create_replica_app, serve_replica

    _logging()
    backend = EngineBackend(name, EngineConfig(model=model, name=name, quantization=quantization))
    runner, config = backend.engine.model_runner, backend.engine.config
    logging.getLogger("ferryman.replica").info(
        "engine replica %s on http://%s:%d: model %s, quantization %s, %d KV blocks of %d tokens; SIGTERM drains "
        "within %g s", name, host, port, model, quantization or "none", runner.num_blocks, config.block_size, grace_s)
    app = create_replica_app(backend, backend.tokenizer, context_length=backend.engine.config.max_model_len)
    serve_replica(app, host, port, grace_s)
