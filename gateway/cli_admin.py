"""Operator commands: `ferryman db`, `ferryman tenants`, `ferryman keys`, `ferryman prices`, `ferryman report`,
`ferryman ledger check`, `ferryman admin-keys`, `ferryman audit`.

They talk to the ledger directly (FERRYMAN_DATABASE_URL), so they work with or without a running gateway; whoever
can reach the database can do everything, so their changes are in the audit log as "cli:<os user>", role admin.
"""
from __future__ import annotations

import getpass
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import typer

from billing import Billing, audit
from billing.audit import Actor
from billing.pricing import micros, usd
from billing.reports import GROUPS, to_csv, totals
from gateway.config import Settings

db_app = typer.Typer(help="The ledger database: migrations.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and their budgets.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: issue, list, revoke.", no_args_is_help=True)
prices_app = typer.Typer(help="Prices per model, in USD per 1M tokens.", no_args_is_help=True)
ledger_app = typer.Typer(help="The ledger itself: reconciliation.", no_args_is_help=True)
admin_keys_app = typer.Typer(help="People's keys to the admin API and page, one role each: admin, operator, finance.",
                             no_args_is_help=True)

URL = typer.Option(None, "--database-url", help="Ledger URL (default: FERRYMAN_DATABASE_URL or the SQLite file)")


def ledger(url: str | None) -> Billing:
    billing = Billing(url or Settings().database_url)
    billing.create_schema()
    billing.ensure_admin_defaults()
    return billing.acting(Actor(f"cli:{_os_user()}", "admin"))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name
        return "unknown"


def fail(message: str) -> None:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(1)


def tenant_id(billing: Billing, tenant: str) -> int:
    """A tenant given by name, or by id."""
    try:
        return billing.tenant_by_name(tenant)["id"]
    except LookupError:
        try:
            return billing.tenant(int(tenant))["id"]
        except (ValueError, LookupError):
            fail(f"no tenant named '{tenant}' (see `ferryman tenants list`)")


def show(rows: list[dict], columns: list[str]) -> None:
    typer.echo(aligned(rows, columns))


def aligned(rows: list[dict], columns: list[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [columns] + cells)


# --- db ------------------------------------------------------------------------------------------

@db_app.command("upgrade")
def db_upgrade(url: str = URL, revision: str = typer.Argument("head")) -> None:
    """Apply the billing migrations (idempotent)."""
    from billing.db import current, upgrade

    url = url or Settings().database_url
    upgrade(url, revision)
    typer.echo(f"ledger at revision {current(url)}")


@db_app.command("current")
def db_current(url: str = URL) -> None:
    from billing.db import current

    typer.echo(current(url or Settings().database_url) or "empty (run `ferryman db upgrade`)")


# --- tenants -------------------------------------------------------------------------------------

ALLOWED = typer.Option(None, "--allowed-models", help="Comma-separated model / route group names, or 'all'")
STORE = typer.Option(None, "--store-prompts/--no-store-prompts", help="Keep this tenant's prompts for router training")
INTERNAL = typer.Option(None, "--internal/--customer", help="Our own use: reported apart from customers")


def allowed_models(value: str | None) -> list[str] | None:
    return None if value is None or value.strip() == "all" else [m.strip() for m in value.split(",") if m.strip()]


@tenants_app.command("create")
def tenants_create(name: str, priority: str = "standard", rpm: int = typer.Option(None, help="Requests per minute"),
                   tpm: int = typer.Option(None, help="Tokens (prompt + max_tokens) per minute"),
                   max_concurrent: int = None, quality_floor: float = None, large_share: float = None,
                   allowed: str = ALLOWED, store_prompts: bool = STORE, internal: bool = INTERNAL,
                   url: str = URL) -> None:
    billing = ledger(url)
    try:
        t = billing.create_tenant(name, priority=priority, rpm=rpm, tpm=tpm, max_concurrent=max_concurrent,
                                  quality_floor=quality_floor, large_share=large_share,
                                  allowed_models=allowed_models(allowed), store_prompts=bool(store_prompts),
                                  internal=bool(internal))
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"tenant {t['name']} (id {t['id']}) created")


@tenants_app.command("update")
def tenants_update(tenant: str, priority: str = None, rpm: int = None, tpm: int = None, max_concurrent: int = None,
                   quality_floor: float = None, large_share: float = None, allowed: str = ALLOWED,
                   store_prompts: bool = STORE, internal: bool = INTERNAL, url: str = URL) -> None:
    """Change only the options given; `--allowed-models all` lifts the allow-list."""
    billing = ledger(url)
    given = {k: v for k, v in dict(priority=priority, rpm=rpm, tpm=tpm, max_concurrent=max_concurrent,
                                   quality_floor=quality_floor, large_share=large_share,
                                   store_prompts=store_prompts, internal=internal).items() if v is not None}
    if allowed is not None:
        given["allowed_models"] = allowed_models(allowed)
    try:
        t = billing.update_tenant(tenant_id(billing, tenant), **given)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"tenant {t['name']} (id {t['id']}) updated: {', '.join(sorted(given)) or 'nothing to change'}")


@tenants_app.command("list")
def tenants_list(url: str = URL) -> None:
    show(ledger(url).list_tenants(), ["id", "name", "priority", "quality_floor", "large_share", "rpm", "tpm",
                                      "max_concurrent", "allowed_models", "store_prompts", "internal"])


@tenants_app.command("budget")
def tenants_budget(tenant: str, limit_usd: str = typer.Option(..., help="e.g. 25 or 12.50"),
                   period: str = "monthly", alert_percent: int = 80,
                   key_id: int = typer.Option(None, help="Budget one key instead of the whole tenant"),
                   url: str = URL) -> None:
    """Set (or replace) the tenant's budget, or one key's."""
    billing = ledger(url)
    try:
        b = billing.set_budget(tenant_id(billing, tenant), key_id=key_id, limit_micros=micros(limit_usd),
                               period=period, alert_percent=alert_percent)
    except (ValueError, LookupError) as exc:
        fail(str(exc))
    typer.echo(f"budget {b['id']}: {usd(b['limit_micros'])} {b['period']}, {usd(b['remaining_micros'])} left "
               f"in {b['period_key']}, alert at {b['alert_percent']}%")


@tenants_app.command("budgets")
def tenants_budgets(tenant: str = typer.Argument(None), url: str = URL) -> None:
    billing = ledger(url)
    rows = billing.list_budgets(tenant_id(billing, tenant) if tenant else None)
    for r in rows:
        for f in ("limit_micros", "spent_micros", "reserved_micros", "remaining_micros"):
            r[f.replace("_micros", "")] = usd(r[f])
    show(rows, ["id", "tenant_id", "key_id", "period", "period_key", "limit", "spent", "reserved", "remaining",
                "alert_percent"])


# --- keys ----------------------------------------------------------------------------------------

@keys_app.command("create")
def keys_create(tenant_arg: str = typer.Argument(None, metavar="TENANT", help="Tenant name or id"),
                tenant: str = typer.Option(None, "--tenant", help="The same, as an option"),
                name: str = "default", expires_days: float = typer.Option(None, help="Expire after"),
                rpm: int = None, tpm: int = None, max_concurrent: int = None, url: str = URL) -> None:
    """Issue a key; the secret is printed this once. `ferryman keys create acme` = `--tenant acme`."""
    if (tenant_arg is None) == (tenant is None):
        fail("name the tenant once: `ferryman keys create acme` or `ferryman keys create --tenant acme`")
    tenant = tenant or tenant_arg
    billing = ledger(url)
    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=expires_days) if expires_days else None
    try:
        secret, key = billing.create_key(tenant_id(billing, tenant), name, expires_at=expires, rpm=rpm, tpm=tpm,
                                         max_concurrent=max_concurrent)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"key {key['id']} for {tenant}: {secret}")


@keys_app.command("list")
def keys_list(tenant: str = typer.Argument(None), url: str = URL) -> None:
    billing = ledger(url)
    show(billing.list_keys(tenant_id(billing, tenant) if tenant else None),
         ["id", "tenant_id", "name", "key_prefix", "rpm", "tpm", "max_concurrent", "expires_at", "revoked_at"])


@keys_app.command("revoke")
def keys_revoke(key_id: int, url: str = URL) -> None:
    try:
        key = ledger(url).revoke_key(key_id)
    except LookupError as exc:
        fail(str(exc))
    typer.echo(f"key {key['id']} ({key['key_prefix']}...) revoked; running gateways drop it within seconds")


# --- prices --------------------------------------------------------------------------------------

@prices_app.command("list")
def prices_list(url: str = URL) -> None:
    rows = ledger(url).list_prices()
    for r in rows:
        for f in ("input", "cached_input", "output"):
            r[f] = usd(r[f"{f}_micros_per_m"])
        r["gpu_hour"] = "-" if r["gpu_hour_micros"] is None else usd(r["gpu_hour_micros"])
    show(rows, ["model", "input", "cached_input", "output", "gpu_hour", "updated_at"])


@prices_app.command("set")
def prices_set(model: str, input_usd: str = typer.Option(..., help="USD per 1M uncached prompt tokens"),
               cached_usd: str = typer.Option(..., help="USD per 1M cached prompt tokens"),
               output_usd: str = typer.Option(..., help="USD per 1M completion tokens"),
               gpu_hour_usd: str = typer.Option(None, help="USD per GPU-hour: bill this engine model per attributed "
                                                "GPU-second instead (the token prices cap each request); 'off': per "
                                                "token again; left out: as it was"),
               url: str = URL) -> None:
    try:
        gpu_hour = ... if gpu_hour_usd is None else None if gpu_hour_usd == "off" else micros(gpu_hour_usd)
        ledger(url).set_price(model, input_micros_per_m=micros(input_usd), cached_input_micros_per_m=micros(cached_usd),
                              output_micros_per_m=micros(output_usd), gpu_hour_micros=gpu_hour)
    except ValueError as exc:
        fail(str(exc))
    gpu = f"; billed per GPU-second at ${gpu_hour_usd} per GPU-hour" if isinstance(gpu_hour, int) else ""
    typer.echo(f"{model}: ${input_usd} in, ${cached_usd} cached, ${output_usd} out per 1M tokens{gpu}")


# --- report --------------------------------------------------------------------------------------

def report(group_by: str = typer.Option("tenant,model,day", help=f"Any of {', '.join(GROUPS)}"),
           since: str = typer.Option(None, help="First UTC day, YYYY-MM-DD"),
           until: str = typer.Option(None, help="Last UTC day, YYYY-MM-DD"),
           tenant: str = typer.Option(None, help="Only this tenant"),
           format: str = typer.Option("table", help="table | csv | json"),
           output: Path = typer.Option(None, help="Write to this file instead of the terminal"),
           url: str = URL) -> None:
    """Cost, tokens, requests and savings versus sending everything to the large model."""
    billing = ledger(url)
    try:
        rows = billing.report(tuple(group_by.split(",")), since=since, until=until,
                              tenant_id=tenant_id(billing, tenant) if tenant else None)
    except ValueError as exc:
        fail(str(exc))
    if format == "csv":
        text = to_csv(rows)
    elif format == "json":
        text = json.dumps({"rows": rows, "totals": totals(rows)}, indent=2)
    elif format == "table":
        text = _table(rows, group_by.split(","))
    else:
        fail("format must be table, csv or json")
    if output:
        output.write_text(text)
        typer.echo(f"wrote {len(rows)} rows to {output}")
    else:
        typer.echo(text.rstrip())


def _table(rows: list[dict], groups: list[str]) -> str:
    """`cost` is what was billed; self-hosted models show their GPU-seconds and what each price says."""
    shown = [{**r, "tokens": r["prompt_tokens"] + r["completion_tokens"], "cost": usd(r["cost_micros"]),
              "savings vs large": usd(r["savings_micros"]), "GPU-s": f"{r['gpu_seconds']:.3f}",
              "at token prices": usd(r["token_cost_micros"]),
              "at GPU-hour price": "-" if r["gpu_cost_micros"] is None else usd(r["gpu_cost_micros"])}
             for r in rows + [{groups[0]: "total", **totals(rows)}]]
    return aligned(shown, groups + ["requests", "tokens", "cost", "savings vs large", "GPU-s", "at token prices",
                                    "at GPU-hour price"])


@ledger_app.command("check")
def ledger_check(url: str = URL) -> None:
    """Recompute every money figure (budget counters, budgets shown, /v1/usage, /admin reports and CSV) from the
    records, for every tenant and period; exit 1 listing each difference, to the micro-dollar."""
    from billing.reconcile import differences

    billing = ledger(url)
    found = differences(billing)
    billing.close()
    if found:
        fail("\n".join(["the ledger does not reconcile:", *found]))
    typer.echo("the ledger reconciles: every budget counter, report and CSV equals its records to the micro-dollar")


# --- admin keys and the audit log --------------------------------------------------------------------

@admin_keys_app.command("create")
def admin_keys_create(name: str = typer.Argument(..., help="Who holds it: the name the audit log shows"),
                      role: str = typer.Option(..., help="admin | operator | finance"), url: str = URL) -> None:
    """Issue a person's admin key; the secret is printed this once (only its hash is kept)."""
    try:
        secret, key = ledger(url).admins.create(name, role)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"admin key {key['id']} for {key['name']} ({key['role']}): {secret}")


@admin_keys_app.command("list")
def admin_keys_list(url: str = URL) -> None:
    """Every admin key, revoked ones too (the audit log names them)."""
    show(ledger(url).admins.list(), ["id", "name", "role", "key_prefix", "created_at", "revoked_at"])


@admin_keys_app.command("revoke")
def admin_keys_revoke(key: str = typer.Argument(..., help="The key's name, or its id"), url: str = URL) -> None:
    """Refused from the next request on, on every gateway."""
    admins = ledger(url).admins
    try:
        revoked = admins.revoke(key)
    except LookupError as exc:
        if not key.isdigit():
            fail(str(exc))
        try:
            revoked = admins.revoke(int(key))
        except LookupError:
            fail(f"no admin key named or numbered {key!r} (see `ferryman admin-keys list`)")
    typer.echo(f"admin key {revoked['id']} ({revoked['name']}, {revoked['role']}) revoked")


def audit_log(actor: str = typer.Option(None, help="Only this actor: an admin key's name, cli:<user>, ..."),
              action: str = typer.Option(None, help="One action (tenant.update) or a kind (tenant)"),
              target: str = typer.Option(None, help="Only this object, e.g. tenant:3 or price:ferryman-small"),
              since: datetime = typer.Option(None, formats=["%Y-%m-%d"], help="First UTC day"),
              until: datetime = typer.Option(None, formats=["%Y-%m-%d"], help="Last UTC day"),
              limit: int = typer.Option(50, min=1, help="Newest entries shown (csv: every entry that matches)"),
              format: str = typer.Option("table", help="table | csv"),
              output: Path = typer.Option(None, help="Write to this file instead of the terminal"),
              url: str = URL) -> None:
    """Who changed what, from what to what, and when: newest first."""
    if format not in ("table", "csv"):
        fail("format must be table or csv")
    rows = ledger(url).audit(actor=actor, action=action, target=target, since=_date(since), until=_date(until),
                             limit=None if format == "csv" else limit)
    text = audit.to_csv(rows) if format == "csv" else aligned(
        [{**r, "when": r["created_at"].isoformat(" ", "seconds"), "before": audit.json_text(r["before"]),
          "after": audit.json_text(r["after"])} for r in rows],
        ["id", "when", "actor", "actor_role", "action", "target", "before", "after"])
    if output:
        output.write_text(text)
        typer.echo(f"wrote {len(rows)} entries to {output}")
    else:
        typer.echo(text.rstrip())


def _date(moment: datetime | None) -> date | None:
    return moment.date() if moment else None


def install(app: typer.Typer) -> None:
    """Add the operator commands to the `ferryman` command line."""
    app.add_typer(db_app, name="db")
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(keys_app, name="keys")
    app.add_typer(prices_app, name="prices")
    app.add_typer(ledger_app, name="ledger")
    app.command("report")(report)
    app.add_typer(admin_keys_app, name="admin-keys")
    app.command("audit")(audit_log)
