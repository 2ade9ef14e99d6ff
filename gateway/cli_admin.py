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
from typing import Literal

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
def db_upgrade(url: str = URL, revision: str = typer.Argument("head", help="Alembic revision to reach")) -> None:
    """Apply the billing migrations (idempotent)."""
    from billing.db import current, upgrade

    url = url or Settings().database_url
    upgrade(url, revision)
    typer.echo(f"ledger at revision {current(url)}")


@db_app.command("current")
def db_current(url: str = URL) -> None:
    """The ledger's migration revision."""
    from billing.db import current

    typer.echo(current(url or Settings().database_url) or "empty (run `ferryman db upgrade`)")


# --- tenants -------------------------------------------------------------------------------------

TENANT = typer.Argument(..., help="Tenant name or id")
ALLOWED = typer.Option(None, "--allowed-models", help="Comma-separated model / route group names, or 'all'")
STORE = typer.Option(None, "--store-prompts/--no-store-prompts", help="Keep this tenant's prompts for router training")
INTERNAL = typer.Option(None, "--internal/--customer", help="Our own use: reported apart from customers")
Priority = Literal["interactive", "standard", "batch"]
PRIORITY = "Scheduling class of its requests in the engines"
CLEARS = "; 'none' removes it"  # a limit or target once set can be taken away again
RPM, TPM = "Requests per minute", "Tokens (prompt + max_tokens) per minute"
CONCURRENT = "Requests in flight at once"
FLOOR = "Quality target: the share of the strongest tier's quality to keep, 0-1 (the router's threshold)"
SHARE = "Cost target instead: at most this share of requests to the strongest tier, 0-1"
NONE = ("none", "null", "off", "unlimited")


def cleared(option: str, value: str | None, kind: type = int):
    """A limit option's value: left out (...), removed (None: 'none'), or a number."""
    if value is None:
        return ...
    if value.strip().lower() in NONE:
        return None
    try:
        return kind(value)
    except ValueError:
        fail(f"{option} takes a {'whole ' if kind is int else ''}number or 'none', not {value!r}")


def allowed_models(value: str | None) -> list[str] | None:
    return None if value is None or value.strip() == "all" else [m.strip() for m in value.split(",") if m.strip()]


@tenants_app.command("create")
def tenants_create(name: str = typer.Argument(..., help="A unique name (reports and metrics show it)"),
                   priority: Priority = typer.Option("standard", help=PRIORITY),
                   rpm: int = typer.Option(None, help=RPM), tpm: int = typer.Option(None, help=TPM),
                   max_concurrent: int = typer.Option(None, help=CONCURRENT),
                   quality_floor: float = typer.Option(None, help=FLOOR),
                   large_share: float = typer.Option(None, help=SHARE),
                   allowed: str = ALLOWED, store_prompts: bool = STORE, internal: bool = INTERNAL,
                   url: str = URL) -> None:
    """Create a tenant; limits left out are unlimited."""
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
def tenants_update(tenant: str = TENANT, priority: Priority = typer.Option(None, help=PRIORITY),
                   rpm: str = typer.Option(None, metavar="N|none", help=RPM + CLEARS),
                   tpm: str = typer.Option(None, metavar="N|none", help=TPM + CLEARS),
                   max_concurrent: str = typer.Option(None, metavar="N|none", help=CONCURRENT + CLEARS),
                   quality_floor: str = typer.Option(None, metavar="X|none", help=FLOOR + CLEARS),
                   large_share: str = typer.Option(None, metavar="X|none", help=SHARE + CLEARS),
                   allowed: str = ALLOWED, store_prompts: bool = STORE, internal: bool = INTERNAL,
                   url: str = URL) -> None:
    """Change only the options given; `--rpm none` (any limit) removes it, `--allowed-models all` the allow-list."""
    given = dict(priority=priority, rpm=cleared("--rpm", rpm), tpm=cleared("--tpm", tpm),
                 max_concurrent=cleared("--max-concurrent", max_concurrent),
                 quality_floor=cleared("--quality-floor", quality_floor, float),
                 large_share=cleared("--large-share", large_share, float), store_prompts=store_prompts,
                 internal=internal)
    given = {k: v for k, v in given.items() if v is not ... and (v is not None or k not in
                                                                ("priority", "store_prompts", "internal"))}
    if allowed is not None:
        given["allowed_models"] = allowed_models(allowed)
    billing = ledger(url)
    try:
        t = billing.update_tenant(tenant_id(billing, tenant), **given)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"tenant {t['name']} (id {t['id']}) updated: {', '.join(sorted(given)) or 'nothing to change'}")


@tenants_app.command("list")
def tenants_list(url: str = URL) -> None:
    """Every tenant with its routing targets and limits (empty: none)."""
    show(ledger(url).list_tenants(), ["id", "name", "priority", "quality_floor", "large_share", "rpm", "tpm",
                                      "max_concurrent", "allowed_models", "store_prompts", "internal"])


KEY_BUDGET = typer.Option(None, help="One key's budget instead of the whole tenant's")


@tenants_app.command("budget")
def tenants_budget(tenant: str = TENANT, limit_usd: str = typer.Option(..., help="e.g. 25 or 12.50"),
                   period: Literal["daily", "monthly"] = typer.Option("monthly", help="When spend starts again (UTC)"),
                   alert_percents: str = typer.Option("80", help="Alert when spend reaches each of these percents "
                                                      "of the limit (1-100), once per period each: e.g. 50,80,100 "
                                                      "('none')"),
                   key_id: int = KEY_BUDGET, url: str = URL) -> None:
    """Set (or replace) the tenant's budget, or one key's."""
    billing = ledger(url)
    try:
        b = billing.set_budget(tenant_id(billing, tenant), key_id=key_id, limit_micros=micros(limit_usd),
                               period=period, alert_percents=_percent_list(alert_percents))
    except (ValueError, LookupError) as exc:
        fail(str(exc))
    typer.echo(f"budget {b['id']}: {usd(b['limit_micros'])} {b['period']}, {usd(b['remaining_micros'])} left "
               f"in {b['period_key']}, alerts at {_percents_text(b['alert_percents'])}")


def _percent_list(text: str) -> list[int]:
    parts = [] if text.strip().lower() == "none" else [p.strip().rstrip("%") for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"--alert-percents must be whole percents separated by commas (e.g. 50,80,100), got {text!r}")
    return [int(p) for p in parts]


def _percents_text(percents: list[int]) -> str:
    return ", ".join(f"{p}%" for p in percents) or "none"


@tenants_app.command("budget-delete")
def tenants_budget_delete(tenant: str = TENANT, key_id: int = KEY_BUDGET, url: str = URL) -> None:
    """Remove the tenant's budget (or one key's): its spend is no longer capped; usage records stay."""
    billing = ledger(url)
    owner = tenant_id(billing, tenant)
    found = [b for b in billing.list_budgets(owner) if b["key_id"] == key_id]
    if not found:
        fail(f"{tenant}{f' key {key_id}' if key_id else ''} has no budget (see `ferryman tenants budgets`)")
    billing.delete_budget(found[0]["id"])
    typer.echo(f"budget {found[0]['id']} of {tenant}{f' key {key_id}' if key_id else ''} deleted")


@tenants_app.command("budgets")
def tenants_budgets(tenant: str = typer.Argument(None, help="Only this tenant (name or id)"), url: str = URL) -> None:
    """Budgets with this period's spend, holds of requests in flight, and what is left."""
    billing = ledger(url)
    rows = billing.list_budgets(tenant_id(billing, tenant) if tenant else None)
    for r in rows:
        for f in ("limit_micros", "spent_micros", "reserved_micros", "remaining_micros"):
            r[f.replace("_micros", "")] = usd(r[f])
        r["alerts"] = _percents_text(r["alert_percents"])
    show(rows, ["id", "tenant_id", "key_id", "period", "period_key", "limit", "spent", "reserved", "remaining",
                "alerts"])


@tenants_app.command("alerts")
def tenants_alerts(tenant: str = typer.Argument(None, help="Only this tenant (name or id)"), url: str = URL) -> None:
    """Budget alerts that fired (one per budget, period and threshold), and whether the webhook has had them."""
    billing = ledger(url)
    rows = billing.list_alerts(tenant_id(billing, tenant) if tenant else None)
    for r in rows:
        r["spent"], r["limit"] = usd(r["spent_micros"]), usd(r["limit_micros"])
        r["sent"] = r["sent_at"] or "no"
    show(rows, ["id", "tenant", "key_id", "budget_id", "period_key", "alert_percent", "spent", "limit",
                "created_at", "sent"])


# --- keys ----------------------------------------------------------------------------------------

@keys_app.command("create")
def keys_create(tenant_arg: str = typer.Argument(None, metavar="TENANT", help="Tenant name or id"),
                tenant: str = typer.Option(None, "--tenant", help="The same, as an option"),
                name: str = typer.Option("default", help="What the key is for (lists and reports show it)"),
                expires_days: float = typer.Option(None, help="Expire after this many days"),
                rpm: int = typer.Option(None, help=RPM), tpm: int = typer.Option(None, help=TPM),
                max_concurrent: int = typer.Option(None, help=CONCURRENT), url: str = URL) -> None:
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


@keys_app.command("update")
def keys_update(key_id: int = typer.Argument(..., help="The key's id (see `ferryman keys list`)"),
                rpm: str = typer.Option(None, metavar="N|none", help=RPM + CLEARS),
                tpm: str = typer.Option(None, metavar="N|none", help=TPM + CLEARS),
                max_concurrent: str = typer.Option(None, metavar="N|none", help=CONCURRENT + CLEARS),
                url: str = URL) -> None:
    """Change a key's own limits (within its tenant's); only the options given."""
    given = dict(rpm=cleared("--rpm", rpm), tpm=cleared("--tpm", tpm),
                 max_concurrent=cleared("--max-concurrent", max_concurrent))
    given = {k: v for k, v in given.items() if v is not ...}
    try:
        key = ledger(url).update_key(key_id, **given)
    except (ValueError, LookupError) as exc:
        fail(str(exc))
    typer.echo(f"key {key['id']} updated: {', '.join(sorted(given)) or 'nothing to change'}")


@keys_app.command("list")
def keys_list(tenant: str = typer.Argument(None, help="Only this tenant (name or id)"), url: str = URL) -> None:
    """Keys (never their secrets: only the prefix is kept in clear), revoked ones too."""
    billing = ledger(url)
    show(billing.list_keys(tenant_id(billing, tenant) if tenant else None),
         ["id", "tenant_id", "name", "key_prefix", "rpm", "tpm", "max_concurrent", "expires_at", "revoked_at"])


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="The key's id (see `ferryman keys list`)"),
                url: str = URL) -> None:
    """Revoke a key: running gateways refuse it within seconds."""
    try:
        key = ledger(url).revoke_key(key_id)
    except LookupError as exc:
        fail(str(exc))
    typer.echo(f"key {key['id']} ({key['key_prefix']}...) revoked; running gateways drop it within seconds")


# --- prices --------------------------------------------------------------------------------------

@prices_app.command("list")
def prices_list(url: str = URL) -> None:
    """Every model's prices (USD per 1M tokens, per GPU-hour where set)."""
    rows = ledger(url).list_prices()
    for r in rows:
        for f in ("input", "cached_input", "output"):
            r[f] = usd(r[f"{f}_micros_per_m"])
        r["gpu_hour"] = "-" if r["gpu_hour_micros"] is None else usd(r["gpu_hour_micros"])
    show(rows, ["model", "input", "cached_input", "output", "gpu_hour", "updated_at"])


@prices_app.command("set")
def prices_set(model: str = typer.Argument(..., help="Model name, as in the catalog"), input_usd: str = typer.Option(..., help="USD per 1M uncached prompt tokens"),
               cached_usd: str = typer.Option(..., help="USD per 1M cached prompt tokens"),
               output_usd: str = typer.Option(..., help="USD per 1M completion tokens"),
               gpu_hour_usd: str = typer.Option(None, help="USD per GPU-hour: bill this engine model per attributed "
                                                "GPU-second instead (the token prices cap each request); 'off': per "
                                                "token again; left out: as it was"),
               url: str = URL) -> None:
    """Set a model's prices; usage already recorded keeps the cost it was charged."""
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
