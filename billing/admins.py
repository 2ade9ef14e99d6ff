"""People's keys to the admin API, each with one role; stored as sha256 like tenant keys.

What each role may do is decided per route (gateway/api/deps.py); here: issue, list, revoke, and who a key is.
"""
from __future__ import annotations

import secrets
from datetime import datetime
from typing import Callable

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from billing import audit
from billing.audit import SYSTEM, Actor
from billing.auth import hash_key
from billing.models import admin_keys
from billing.operators import _name

ROLES = ("admin", "operator", "finance")
PREFIX = "fm-admin-"
BOOTSTRAP = "bootstrap"  # the admin key `serve` mints when the ledger has never had one


class Admins:
    def __init__(self, engine: Engine, clock: Callable[[], datetime], actor: Actor = SYSTEM):
        self.engine, self.clock, self.actor = engine, clock, actor

    def acting(self, actor: Actor) -> Admins:
        return Admins(self.engine, self.clock, actor)

    def create(self, name: str, role: str) -> tuple[str, dict]:
        """A new admin key: (the secret, shown this once; its metadata)."""
        name = _name(name, "admin key")
        if ":" in name:  # "env:...", "cli:..." and "system:..." name the audit's actors that are no key
            raise ValueError(f"an admin key name may not contain ':', got {name!r}")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        secret = PREFIX + secrets.token_urlsafe(24)
        values = {"name": name, "role": role, "key_prefix": secret[:13], "created_at": self.clock()}
        try:
            with self.engine.begin() as conn:
                key_id = conn.execute(admin_keys.insert().values(key_hash=hash_key(secret), **values)
                                      .returning(admin_keys.c.id)).scalar_one()
                audit.record(conn, self.actor, values["created_at"], "admin_key.create", f"admin_key:{key_id}", None,
                             {"id": key_id, **values})
        except IntegrityError:
            raise ValueError(f"an admin key named '{name}' already exists") from None
        return secret, self.key(key_id)

    def key(self, key_id: int | str) -> dict:
        """By id, or by name."""
        c = admin_keys.c
        column = c.id if isinstance(key_id, int) else c.name
        with self.engine.connect() as conn:
            row = conn.execute(select(*[col for col in c if col.name != "key_hash"]).where(column == key_id)).first()
        if row is None:
            raise LookupError(f"no admin key {'with id' if column is c.id else 'named'} {key_id!r}")
        return row._asdict()

    def list(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [r._asdict() for r in conn.execute(select(*[c for c in admin_keys.c if c.name != "key_hash"])
                                                      .order_by(admin_keys.c.id))]

    def revoke(self, key_id: int | str) -> dict:
        """Refused at once on every replica: admin keys are read from the database on each request."""
        key = self.key(key_id)
        if key["revoked_at"] is None:
            now = self.clock()
            with self.engine.begin() as conn:
                conn.execute(update(admin_keys).where(admin_keys.c.id == key["id"]).values(revoked_at=now))
                audit.record(conn, self.actor, now, "admin_key.revoke", f"admin_key:{key['id']}",
                             {"revoked_at": None}, {"revoked_at": now})
        return self.key(key["id"])

    def authenticate(self, secret: str) -> Actor | None:
        """The key's holder, or None for an unknown or revoked key."""
        c = admin_keys.c
        with self.engine.connect() as conn:
            row = conn.execute(select(c.name, c.role).where(c.key_hash == hash_key(secret),
                                                            c.revoked_at.is_(None))).first()
        return None if row is None else Actor(row.name, row.role)

    def mint_bootstrap(self) -> str | None:
        """The first admin key, for a ledger that has never had one: its secret, or None when there was one already
        (so the key stays the same from one start to the next)."""
        with self.engine.connect() as conn:
            if conn.execute(select(admin_keys.c.id).where(admin_keys.c.role == "admin").limit(1)).first():
                return None
        try:
            return self.create(BOOTSTRAP, "admin")[0]
        except ValueError:  # another replica starting at the same moment minted it
            return None
