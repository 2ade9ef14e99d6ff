"""The audit log: who changed what, from what to what, when. Append-only (the migration's triggers refuse an
UPDATE or DELETE), written in the same transaction as the change it describes, so neither exists without the other.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import Connection, Engine, select

from billing.models import audit_log
from billing.reports import text_cell

MAX_PAGE = 1000


@dataclass(frozen=True)
class Actor:
    """Who makes a change: an admin key (its name, with no colon, and its role), or someone who is no key:
    "env:FERRYMAN_ADMIN_KEY", "cli:<os user>" (both role admin) or the gateway itself ("system:gateway")."""

    name: str
    role: str


SYSTEM = Actor("system:gateway", "system")  # changes the gateway makes at start: catalog prices, the demo key, ...


def record(conn: Connection, actor: Actor, now: datetime, action: str, target: str, before: dict | None,
           after: dict | None) -> None:
    """One entry for a change; an update keeps only the fields that changed, so the entry reads as before -> after."""
    before, after = _plain(before), _plain(after)
    if before is not None and after is not None:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if not changed:
            return  # nothing changed: nothing to record
        before, after = {k: before.get(k) for k in changed}, {k: after.get(k) for k in changed}
    conn.execute(audit_log.insert().values(created_at=now, actor=actor.name, actor_role=actor.role, action=action,
                                           target=target, before=before, after=after))


def _plain(row: dict | None) -> dict | None:
    """A row as JSON keeps it: timestamps as ISO text."""
    return None if row is None else json.loads(json.dumps(row, default=lambda v: v.isoformat()))


def entries(engine: Engine, *, actor: str | None = None, action: str | None = None, target: str | None = None,
            since: date | None = None, until: date | None = None, before_id: int | None = None,
            limit: int | None = 100) -> list[dict]:
    """Newest first. `action` is one ("tenant.update") or a kind ("tenant": every tenant.*); `since` and `until`
    are whole UTC days; `before_id` pages back from an entry; `limit` None: every entry that matches."""
    c = audit_log.c
    query = select(audit_log).order_by(c.id.desc()).limit(limit)
    if actor is not None:
        query = query.where(c.actor == actor)
    if action is not None:
        query = query.where(c.action == action if "." in action else c.action.startswith(f"{action}.", autoescape=True))
    if target is not None:
        query = query.where(c.target == target)
    if since is not None:
        query = query.where(c.created_at >= datetime.combine(since, time()))
    if until is not None:
        query = query.where(c.created_at < datetime.combine(until + timedelta(days=1), time()))
    if before_id is not None:
        query = query.where(c.id < before_id)
    with engine.connect() as conn:
        return [row._asdict() for row in conn.execute(query)]


COLUMNS = ["id", "created_at", "actor", "actor_role", "action", "target", "before", "after"]


def to_csv(rows: list[dict]) -> str:
    """Oldest first, as a log reads; before and after as JSON text. Names an admin typed (the actor, a model in a
    target) are text cells a spreadsheet will not run (billing.reports.text_cell)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in reversed(rows):
        writer.writerow([row["id"], row["created_at"].isoformat(), *map(text_cell, (
            row["actor"], row["actor_role"], row["action"], row["target"])), json_text(row["before"]),
            json_text(row["after"])])
    return out.getvalue()


def json_text(value: dict | None) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True)
