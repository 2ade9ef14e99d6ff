"""The money path for several replicas without a database round trip per request: holds in Redis, records in batches.

Used when a Redis URL is configured (`FERRYMAN_REDIS_URL`); the database stays the ledger of record.

- reserve: one Lua script checks `spent + reserved + amount <= limit` on the tenant's and the key's budget
  together and takes both holds, or neither; Redis runs scripts one at a time, so any number of replicas can
  never hold past a budget. Limits come with the principal (cached from the database); Redis keeps each budget
  period's spent and reserved, seeded once from that period's records, written and unwritten (HSETNX: concurrent
  seeders agree).
- settle: one Lua script drops the hold, moves the cost from reserved to spent and appends the usage record to
  a stream, atomically: a settled request is in the stream exactly once, and a second settle finds no hold.
- both scripts are awaited over one pipelined connection per event loop (billing/resp.py, no blocking round
  trip); the writer, `open_holds` and `unwritten` use redis-py.
- a writer per gateway process (`Writer`) reads the stream in a consumer group and writes each batch in one
  database transaction: the records `ON CONFLICT (request_id) DO NOTHING`, and budget_spend grows by the cost
  of the records actually inserted; then XACK. A batch redelivered after a crash between commit and XACK
  inserts nothing and adds nothing. A dead writer's pending entries are claimed by a live one (XAUTOCLAIM).
- a replica that dies mid-request leaves its holds; any replica reaps them once expired (`reap`), through
  the same settle script, so each becomes exactly one zero-cost 'expired' record.

Finance reads the database: it lags the settlements by the writer's interval plus one transaction (50 ms + a few
ms while a writer runs; under 100 ms). If Redis loses its data, budgets re-seed from the database, which lacks the unwritten batch.
What is charged is decided by billing.rules, as in the SQL ledger (billing.ledger); the two share no base class.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from billing import resp, rules
from billing.auth import BudgetRef, Principal
from billing.ledger import Prices, open_period, records_spend, stored_record
from billing.models import budget_alerts, budget_spend, budgets, usage_records
from billing.pricing import FREE, usd
from billing.rules import DuplicateRequest, Reservation, UsageRecord

log = logging.getLogger("ferryman.billing")

BUDGET_TTL_MS = 40 * 24 * 3600 * 1000  # a budget period's counters outlive the longest period (a month)
GROUP = "writers"
RECHECK_S = 1.0  # after Redis answers again, the writer reads its own unacknowledged entries this long (Writer.own)

# Every script first checks (KEYS[1] epoch, ARGV[1] the epoch the caller knows, ARGV[2] its deadline in ms): a
# call that arrives after its caller gave up does nothing ({'late'}: a stalled path may deliver it later), and a
# Redis whose epoch is gone or new lost its data ({'epoch'}: the caller recovers first, `RedisLedger.recover`).
FENCE = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[2]) then return {'late'} end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'epoch'} end
"""

# KEYS: epoch, holds, expiry, budget periods...  ARGV: epoch, deadline, request id, amount, expires (ms), hold,
# then limit and seed per budget ('' = not known yet). Returns {'ok'} | {'dup'} | {'seed', i} |
# {'full', i, spent, reserved}.
RESERVE = FENCE + """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then return {'dup'} end
local amount, n = tonumber(ARGV[4]), #KEYS - 3
for i = 1, n do
  local seed = ARGV[6 + 2 * i]
  if seed ~= '' then redis.call('HSETNX', KEYS[3 + i], 'spent', seed) end
  if redis.call('HEXISTS', KEYS[3 + i], 'spent') == 0 then return {'seed', tostring(i)} end
end
for i = 1, n do
  local spent = tonumber(redis.call('HGET', KEYS[3 + i], 'spent'))
  local reserved = tonumber(redis.call('HGET', KEYS[3 + i], 'reserved') or '0')
  if spent + reserved + amount > tonumber(ARGV[5 + 2 * i]) then
    return {'full', tostring(i), tostring(spent), tostring(reserved)}
  end
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[3 + i], 'reserved', ARGV[4])
  redis.call('PEXPIRE', KEYS[3 + i], %d)
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
return {'ok'}
""" % BUDGET_TTL_MS

# KEYS: epoch, holds, expiry, stream, budget periods...  ARGV: epoch, deadline, request id, amount, cost, record,
# budgets, then per budget its limit and alert thresholds ("limit/50,80,100"). Returns {'gone'} (already settled or
# reaped) or {'ok', alerts}, an alert being "budget index:percent:spent". The thresholds follow
# billing.rules.alerts_due: each one reached and above the highest alerted this period ('alerted_percent'), which
# the script then raises. A period not seeded since Redis started gets no spend: its seed counts this record (stream).
SETTLE = FENCE + """
if redis.call('HDEL', KEYS[2], ARGV[3]) == 0 then return {'gone'} end
redis.call('ZREM', KEYS[3], ARGV[3])
local alerts = {}
for i = 5, #KEYS do
  if redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(ARGV[4])) < 0 then
    redis.call('HSET', KEYS[i], 'reserved', 0)  -- its period was reset meanwhile (Billing.set_budget)
  end
  redis.call('PEXPIRE', KEYS[i], %d)
  if redis.call('HEXISTS', KEYS[i], 'spent') == 1 then
    local spent = redis.call('HINCRBY', KEYS[i], 'spent', ARGV[5])
    local limit, percents = string.match(ARGV[i + 3], '^(%%d+)/(.*)$')
    local alerted = tonumber(redis.call('HGET', KEYS[i], 'alerted_percent') or '0')
    local top = alerted
    for p in string.gmatch(percents, '%%d+') do
      local percent = tonumber(p)
      if percent > alerted and spent * 100 >= tonumber(limit) * percent then
        alerts[#alerts + 1] = (i - 4) .. ':' .. p .. ':' .. spent
        top = math.max(top, percent)
      end
    end
    if top > alerted then redis.call('HSET', KEYS[i], 'alerted_percent', top) end
  end
end
local crossed = table.concat(alerts, ',')
redis.call('XADD', KEYS[4], '*', 'record', ARGV[6], 'budgets', ARGV[7], 'alerts', crossed)
return {'ok', crossed}
""" % BUDGET_TTL_MS

# After a loss: a hold this process still has in flight, held again under the new epoch (once), with no limit
# check (it was admitted). KEYS: epoch, holds, expiry, budget periods...  ARGV: epoch, request id, amount,
# expires, hold.
ADOPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[5]) == 0 then return 0 end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
for i = 4, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[3])
  redis.call('PEXPIRE', KEYS[i], %d)
end
return 1
""" % BUDGET_TTL_MS

RESERVE_SCRIPT, SETTLE_SCRIPT = resp.Script(RESERVE), resp.Script(SETTLE)


@dataclass(frozen=True)
class Hold(Reservation):
    """A reservation held in Redis: which budget periods it holds (tenant's first)."""

    budgets: tuple[BudgetRef, ...] = ()
    period_keys: tuple[str, ...] = ()
    on_tenant: bool = False  # it holds on the tenant's budget (what `holds` sums)

    def entry(self) -> str:
        """What Redis keeps of the hold, for reaping it and for `holds`."""
        return json.dumps({"t": self.tenant_id, "k": self.key_id, "m": self.model, "a": self.amount_micros,
                           "d": self.day, "b": [list(ref) for ref in self.budgets], "p": self.period_keys,
                           "tb": self.on_tenant})

    @classmethod
    def from_entry(cls, request_id: str, payload: bytes) -> Hold:
        h = json.loads(payload)
        return cls(request_id, h["t"], h["k"], h["m"], h["a"], FREE, h["d"], False,
                   tuple(BudgetRef(*b[:3], tuple(b[3])) for b in h["b"]), tuple(h["p"]), h["tb"])


class RedisLedger:
    """billing.rules.Ledger with holds in Redis and records written to the database in batches (`Writer`)."""

    def __init__(self, engine, clock, cache_ttl_s: float, reservation_ttl_s: float, redis_url: str,
                 prefix: str = "ferryman", timeout_s: float = 2.0, recovery_s: float = 3.0):
        self.engine, self.clock, self.redis_url = engine, clock, redis_url
        self.prices = Prices(engine, cache_ttl_s)
        self.reservation_ttl_s = reservation_ttl_s
        # For the writer thread, operator commands and tests. Short timeouts: a Redis that stops answering must
        # fail the call, not hang it.
        self.redis = redis.Redis.from_url(url=redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.timeout_s = timeout_s
        # Redis's data is only as durable as its persistence: the epoch key, written when this prefix is first used,
        # is gone (or new) after Redis lost its data. Holds are then refused until `ready_at` (wall-clock seconds),
        # while every replica holds its requests in flight again (`recover`) and budgets re-seed from the database.
        self.epoch_key, self.epoch, self.ready_at = f"{prefix}:ledger:epoch", "", 0.0
        self.recovery_s = recovery_s
        self.in_flight: dict[str, Hold] = {}  # this process's open holds, by request id
        self._recovering = threading.Lock()
        self.prefix = f"{prefix}:ledger"
        self.holds_key, self.expiry_key, self.stream = (f"{self.prefix}:holds", f"{self.prefix}:expiry",
                                                        f"{self.prefix}:settled")
        # The request path's pipelined client (billing.resp), one per event loop: a connection belongs to its loop,
        # and billing.Billing's synchronous calls run on a loop of their own.
        self._fast: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def fast(self) -> resp.Redis:
        loop = asyncio.get_running_loop()
        client = self._fast.get(loop)
        if client is None:
            client = self._fast[loop] = resp.Redis(self.redis_url, self.timeout_s)
        return client

    def budget_key(self, budget_id: int, period: str) -> str:
        return f"{self.prefix}:budget:{budget_id}:{period}"

    # --- reserve -----------------------------------------------------------------------------------

    async def reserve(self, principal: Principal, request_id: str, model: str, prompt_tokens: int,
                      max_tokens: int) -> Hold:
        """One pipelined round trip to Redis (two the first time a budget period is used since Redis started)."""
        if self.prices.stale():  # the database read, once every few seconds, off the loop
            await asyncio.to_thread(self.prices, model)
        hold = self._new_hold(principal, request_id, model, prompt_tokens, max_tokens)
        keys = [self.epoch_key, self.holds_key, self.expiry_key, *self._period_keys(hold)]
        seeds, payload = [""] * len(hold.budgets), hold.entry()
        while True:
            self._refuse_while_recovering()
            answer = await self._fenced(RESERVE_SCRIPT, keys, self._hold_args(hold, payload, seeds))
            if answer is None:
                continue
            if (i := self._held(answer, hold, principal, prompt_tokens, max_tokens)) is None:
                self.in_flight[request_id] = hold
                return hold
            seeds[i] = str(await asyncio.to_thread(self._period_spend, hold, i))

    async def _fenced(self, script: resp.Script, keys: list, args: list) -> list | None:
        """Run a fenced script (FENCE); None when Redis lost its data and this process recovered: call again."""
        deadline_ms = round((time.time() + self.timeout_s) * 1000)
        answer = await self.fast().script(script, keys, [self.epoch, deadline_ms, *args])
        if answer[0] == b"late":
            raise redis.TimeoutError(f"Redis answered after the {self.timeout_s:g} s deadline")
        if answer[0] == b"epoch":
            await asyncio.to_thread(self.recover)
            return None
        return answer

    def _refuse_while_recovering(self) -> None:
        if (wait := self.ready_at - time.time()) > 0:
            raise rules.LedgerRecovering(
                "Redis lost the budget ledger's data; budgets are being re-seeded from the database. Please retry "
                "shortly.", math.ceil(wait))

    def _period_keys(self, hold: Hold) -> list[str]:
        return [self.budget_key(r.id, p) for r, p in zip(hold.budgets, hold.period_keys)]

    def _new_hold(self, principal: Principal, request_id: str, model: str, prompt_tokens: int,
                  max_tokens: int) -> Hold:
        price = self.prices(model)
        now = self.clock()
        refs = tuple(ref for ref in (principal.tenant_budget, principal.key_budget) if ref is not None)
        return Hold(request_id, principal.tenant_id, principal.key_id, model,
                    rules.worst_case(price, prompt_tokens, max_tokens), price, now.strftime("%Y-%m-%d"),
                    principal.store_prompts, refs, tuple(rules.period_key(ref.period, now) for ref in refs),
                    principal.tenant_budget is not None)

    def _hold_args(self, hold: Hold, payload: str, seeds: list[str]) -> list:
        expires_ms = round((_epoch_s(self.clock()) + self.reservation_ttl_s) * 1000)
        args = [hold.request_id, hold.amount_micros, expires_ms, payload]
        for ref, seed in zip(hold.budgets, seeds):
            args += [ref.limit_micros, seed]
        return args

    def _held(self, answer: list, hold: Hold, principal: Principal, prompt_tokens: int, max_tokens: int) -> int | None:
        """None once held; the index of a budget period Redis must first be told the spend of; else raises."""
        answer = [x.decode() for x in answer]
        if answer[0] == "ok":
            return None
        if answer[0] == "dup":
            raise DuplicateRequest(f"request id '{hold.request_id}' already has an open reservation")
        i = int(answer[1]) - 1
        if answer[0] == "seed":  # first use of this budget period since Redis started
            return i
        ref = hold.budgets[i]
        raise rules.exceeded("tenant" if ref is principal.tenant_budget else "key", ref.period, hold.period_keys[i],
                             ref.limit_micros, int(answer[2]), int(answer[3]), hold.amount_micros, hold.model,
                             prompt_tokens, max_tokens)

    def _period_spend(self, hold: Hold, i: int) -> int:
        """A budget period's spend as the records say: those in the database plus those settled but not written yet
        (the stream is read first, so a record the writer moves meanwhile is in one of the two, counted once)."""
        ref, key = hold.budgets[i], hold.period_keys[i]
        first, last = rules.period_days(key)
        key_id = None if i == 0 and hold.on_tenant else hold.key_id  # a tenant budget covers all its keys
        pending = {r["request_id"]: r["cost_micros"] for r in self._unwritten_records()
                   if r["tenant_id"] == hold.tenant_id and key_id in (None, r["key_id"]) and first <= r["day"] <= last}
        with self.engine.connect() as conn:
            written = conn.execute(select(records_spend(ref.id, first, last))).scalar_one()
            if pending:
                written -= conn.execute(select(func.coalesce(func.sum(usage_records.c.cost_micros), 0)).where(
                    usage_records.c.request_id.in_(list(pending)))).scalar_one()
        return int(written) + sum(pending.values())

    # --- settle ------------------------------------------------------------------------------------

    def usage_record(self, res: Reservation, *, baseline_model: str | None = None, **usage) -> UsageRecord:
        """The record billing.rules.usage_record makes of `usage`, now; writes nothing."""
        return rules.usage_record(res, self.clock(), rules.baseline_price(self.prices, baseline_model), **usage)

    async def settle(self, res: Hold, **usage) -> UsageRecord:
        """Charge the actual cost and queue the record for the writer, atomically, in one pipelined round trip.
        A second settle, or one after the hold was reaped, charges nothing and returns the record stored first."""
        record = self.usage_record(res, **usage)
        answer = await self._settle_fenced(res, record)
        if answer[0] == b"ok":
            return record
        stored = await self.record(res.request_id)
        if stored is not None:
            log.warning("request %s was already settled or reaped: not charged again", res.request_id)
            return stored
        # No hold and no record: Redis went back in time without losing its epoch (an AOF that missed its last
        # fsync, a snapshot, a promoted replica), taking the hold with it. Hold it again and settle it, once.
        log.error("request %s: its hold vanished from Redis (restored from an older state?); holding it again",
                  res.request_id)
        await asyncio.to_thread(self._adopt, res, self.epoch)
        if (await self._settle_fenced(res, record))[0] == b"ok":
            return record
        if (stored := await self.record(res.request_id)) is None:  # (else settled meanwhile by a concurrent call)
            raise LookupError(f"request '{res.request_id}' has no open hold and no record")
        return stored

    async def release(self, res: Hold, status: str = "error") -> UsageRecord:
        return await self.settle(res, prompt_tokens=0, completion_tokens=0, status=status)

    async def _settle_fenced(self, res: Hold, record: UsageRecord) -> list:
        while (answer := await self._fenced(SETTLE_SCRIPT, self._settle_keys(res), self._settle_args(res, record))) is None:
            pass  # Redis lost its data: this process's holds are held again, the hold with them
        self.in_flight.pop(res.request_id, None)
        return answer

    def _settle_keys(self, res: Hold) -> list[str]:
        return [self.epoch_key, self.holds_key, self.expiry_key, self.stream, *self._period_keys(res)]

    def _settle_args(self, res: Hold, record: UsageRecord) -> list:
        fields = {**vars(record), "created_at": record.created_at.isoformat()}  # flat: no deep copy
        budgets_json = json.dumps([[r.id, p, r.limit_micros] for r, p in zip(res.budgets, res.period_keys)])
        return [res.request_id, res.amount_micros, record.cost_micros, json.dumps(fields), budgets_json,
                *[f"{r.limit_micros}/{','.join(map(str, r.alert_percents))}" for r in res.budgets]]

    async def record(self, request_id: str) -> UsageRecord | None:
        """The stored record: in the stream while unwritten, else in the database (looked up in that order, so a
        record the writer moves meanwhile is found in one of the two)."""
        for r in await asyncio.to_thread(self._unwritten_records):
            if r["request_id"] == request_id:
                return UsageRecord(**r)
        return await asyncio.to_thread(stored_record, self.engine, request_id)

    async def reap(self, now: datetime | None = None) -> int:
        """Settle, at no cost, the holds whose replica died before settling them; safe on every replica at once."""
        now_ms = _epoch_s(now or self.clock()) * 1000
        fast = self.fast()
        due = await fast.call("ZRANGEBYSCORE", self.expiry_key, "-inf", now_ms, "LIMIT", 0, 1000)
        reaped = 0
        for rid, payload in zip(due, await fast.call("HMGET", self.holds_key, *due) if due else []):
            if payload is None:
                continue
            hold = Hold.from_entry(rid.decode(), payload)
            record = rules.reaped_record(hold, self.clock())
            reaped += (await self._settle_fenced(hold, record))[0] == b"ok"
        return reaped

    async def abandon(self, request_id: str) -> bool:
        payload = await self.fast().call("HGET", self.holds_key, request_id)
        if payload is not None:
            await self.release(Hold.from_entry(request_id, payload), "unavailable")
        self.in_flight.pop(request_id, None)
        return payload is not None

    # --- when Redis loses its data --------------------------------------------------------------------

    def recover(self) -> None:
        """Take up the epoch Redis has now (writing one if it has none) and hold this process's requests in flight
        again under it. An epoch that vanished under this process means Redis lost its data: holds are refused
        for `recovery_s`, long enough for every replica to notice (its writer looks every ~100 ms) and hold its own
        requests again, so that the budgets seeded afterwards (records in the database + the stream) see them all."""
        with self._recovering:
            current = self.redis.get(self.epoch_key)
            if current is not None and current.decode() == self.epoch:
                return
            if current is None:
                # A process just started has nothing in flight, but others may have (Redis lost its data as it
                # started): it waits as well, unless the ledger has no record yet (a new prefix: nothing to lose).
                wait = self.recovery_s if self.epoch or self._has_records() else 0.0
                self.redis.set(self.epoch_key, f"{uuid.uuid4().hex} {int((time.time() + wait) * 1000)}", nx=True)
                current = self.redis.get(self.epoch_key)
            epoch = current.decode()
            if self.epoch:
                log.error("Redis lost the ledger's data (epoch %s is gone): holding %d request(s) in flight again, "
                          "refusing new holds until budgets re-seed", self.epoch.split()[0], len(self.in_flight))
            for hold in list(self.in_flight.values()):
                self._adopt(hold, epoch)
            self.epoch, self.ready_at = epoch, int(epoch.split()[1]) / 1000

    def _adopt(self, hold: Hold, epoch: str) -> None:
        """Hold a request in flight again under `epoch` (once; no limit check: it was admitted)."""
        expires_ms = round((_epoch_s(self.clock()) + self.reservation_ttl_s) * 1000)
        self.redis.eval(ADOPT, 3 + len(hold.budgets), self.epoch_key, self.holds_key, self.expiry_key,
                        *self._period_keys(hold), epoch, hold.request_id, hold.amount_micros, expires_ms, hold.entry())

    def _has_records(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(usage_records.c.request_id).limit(1)).first() is not None

    def check_epoch(self) -> None:
        """Recover now if Redis's epoch is not the one this process holds under (the writer calls it each turn)."""
        current = self.redis.get(self.epoch_key)
        if current is None or current.decode() != self.epoch:
            self.recover()

    async def problem(self) -> str | None:
        """Why holds are refused now (for /ready), or None."""
        current = await self.fast().call("GET", self.epoch_key)
        if current is None or current.decode() != self.epoch:
            await asyncio.to_thread(self.recover)
        if (wait := self.ready_at - time.time()) > 0:
            return f"Redis lost the ledger's data: budgets re-seed, holds refused for {wait:.1f} s more"
        return None

    # --- what is in flight ---------------------------------------------------------------------------

    async def holds(self, tenant_id: int | None = None) -> tuple[int, int]:
        return self.open_holds(tenant_id)

    def open_holds(self, tenant_id: int | None = None) -> tuple[int, int]:
        """(how many holds are open, micro-USD they hold on tenant budgets), optionally for one tenant."""
        count = held = 0
        for payload in self.redis.hvals(self.holds_key):
            h = json.loads(payload)
            if tenant_id is None or h["t"] == tenant_id:
                count += 1
                held += h["a"] if h["tb"] else 0
        return count, held

    def unwritten(self) -> int:
        """Settlements in the stream the database does not have yet (acknowledged entries are deleted)."""
        return self.redis.xlen(self.stream)

    def _unwritten_records(self) -> list[dict]:
        return [_decode(fields)["record"] for _, fields in self.redis.xrange(self.stream)]


class Writer:
    """Writes the settled stream to the database in batches; one per gateway process (a thread)."""

    def __init__(self, ledger: RedisLedger, batch: int = 1000, block_ms: int = 100, claim_idle_ms: int = 30_000,
                 interval_s: float = 0.05):
        self.ledger, self.batch, self.block_ms, self.claim_idle_ms = ledger, batch, block_ms, claim_idle_ms
        self.interval_s = interval_s  # after a batch, let the next one gather: one transaction per interval
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.redis = ledger.redis
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        dialect = ledger.engine.dialect.name
        self._insert = (postgresql if dialect == "postgresql" else sqlite).insert
        # Built once and executed with a list of rows (SQLAlchemy's batched "insertmanyvalues"): a statement
        # compiled for each batch's row count cost the writer more CPU than the rows themselves.
        self._new_records = (self._insert(usage_records).on_conflict_do_nothing(index_elements=["request_id"])
                             .returning(usage_records.c.request_id))
        # On PostgreSQL a batch is one fixed statement over one array per column: the driver parses it once, where
        # a VALUES list as long as the batch was parsed anew every time (the writer's largest CPU cost).
        self._columns = list(UsageRecord.__dataclass_fields__)
        self._unnest = _unnest_insert(self._columns) if dialect == "postgresql" else None
        upsert = self._insert(budget_spend)
        self._add_spend = upsert.on_conflict_do_update(
            index_elements=["budget_id", "period_key"],
            set_={"spent_micros": budget_spend.c.spent_micros + upsert.excluded.spent_micros})
        self.make_group()

    def make_group(self) -> None:
        """The consumer group (and its stream): made at start, and again when Redis lost its data (NOGROUP)."""
        try:
            self.redis.xgroup_create(self.ledger.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after writing what this process settled (a graceful shutdown leaves nothing pending)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            self.step(block_ms=None)
        except Exception:  # what is left stays pending and a live writer claims it
            log.exception("ledger writer: final flush failed")

    def _run(self) -> None:
        next_claim, failed, recheck_until = 0.0, False, 0.0
        while not self._stop.is_set():
            try:
                self.ledger.check_epoch()
                if failed:  # Redis answers again; a read sent on the failed connection may still land (`own`)
                    failed, recheck_until = False, time.monotonic() + RECHECK_S
                if time.monotonic() < recheck_until:
                    self.own()
                if time.monotonic() >= next_claim:  # a dead writer's entries, once they sat unacknowledged a while
                    self.claim(self.claim_idle_ms)
                    next_claim = time.monotonic() + self.claim_idle_ms / 3000
                if 0 < self.step(self.block_ms) < self.batch:
                    self._stop.wait(self.interval_s)
            except Exception as exc:  # Redis or the database away: the entries stay pending; try again shortly
                if "NOGROUP" in str(exc):
                    log.error("ledger writer: Redis lost the settled stream and its consumer group; making them again")
                    with contextlib.suppress(Exception):
                        self.make_group()
                    continue
                log.warning("ledger writer: batch failed (%s), retrying", exc.__class__.__name__)
                failed = True
                self._stop.wait(1.0)

    def step(self, block_ms: int | None) -> int:
        """Read one batch of new entries (waiting up to block_ms), write it, acknowledge it; how many."""
        reply = self.redis.xreadgroup(GROUP, self.consumer, {self.ledger.stream: ">"}, count=self.batch,
                                      block=block_ms)
        entries = reply[0][1] if reply else []
        self.write(entries)
        return len(entries)

    def own(self) -> int:
        """Write the entries delivered to this consumer but never acknowledged; how many. A stalled path delivers a
        read that timed out once it flows again: Redis then hands new entries to a connection nobody reads, and
        only this (or `claim`, 30 s later) writes them."""
        total = 0
        while True:
            reply = self.redis.xreadgroup(GROUP, self.consumer, {self.ledger.stream: "0"}, count=self.batch)
            entries = [e for e in (reply[0][1] if reply else []) if e[1]]  # (a deleted entry has no fields)
            self.write(entries)
            total += len(entries)
            if len(entries) < self.batch:
                return total

    def claim(self, min_idle_ms: int) -> int:
        """Take over and write entries another consumer read but never acknowledged (it died); how many."""
        total, cursor = 0, "0-0"
        while True:
            cursor, entries, *_ = self.redis.xautoclaim(self.ledger.stream, GROUP, self.consumer, min_idle_ms,
                                                       start_id=cursor, count=self.batch)
            self.write([e for e in entries if e[1]])  # a deleted entry comes back without fields
            total += len(entries)
            if cursor in (b"0-0", "0-0"):
                return total

    def drain(self) -> None:
        """Write everything settled so far, whoever read it (tests, a last replica standing)."""
        while self.step(block_ms=None) or self.claim(0):
            pass

    def write(self, entries: list) -> None:
        if not entries:
            return
        self.commit([_decode(fields) for _, fields in entries])
        ids = [entry_id for entry_id, _ in entries]
        # Acknowledged entries are deleted too, so the stream's length is what the database still lacks.
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.ledger.stream, GROUP, *ids)
        pipe.xdel(self.ledger.stream, *ids)
        pipe.execute()

    def commit(self, batch: list[dict]) -> None:
        """One transaction: new records, spend for exactly those, alerts. Idempotent, so redelivery is safe."""
        records = {b["record"]["request_id"]: b for b in batch}
        with self.ledger.engine.begin() as conn:
            inserted = self._insert_new(conn, [b["record"] for b in records.values()])
            spend: dict[tuple[int, str], int] = {}
            for rid in inserted:
                for budget_id, key, _ in records[rid]["budgets"]:
                    spend[budget_id, key] = spend.get((budget_id, key), 0) + records[rid]["record"]["cost_micros"]
            alerts = [(b["budgets"][i - 1], percent, spent) for b in batch for i, percent, spent in b["alerts"]]
            ids = {budget_id for budget_id, _ in spend} | {ref[0] for ref, _, _ in alerts}
            # A budget deleted since the hold was taken has no counters to add to: its records still count.
            live = set(conn.execute(select(budgets.c.id).where(budgets.c.id.in_(ids))).scalars()) if ids else set()
            self._add_spend_of(conn, {bk: c for bk, c in spend.items() if bk[0] in live})
            for (budget_id, key, limit), percent, spent in alerts:
                if budget_id in live:
                    self._alert(conn, budget_id, key, limit, percent, spent)

    def _alert(self, conn, budget_id: int, key: str, limit: int, percent: int, spent: int) -> None:
        """The alert row (once per budget, period and threshold: a Redis that lost its data and alerts again adds
        nothing), and the period's highest alerted threshold, as the SQL ledger keeps it."""
        new = conn.execute(self._insert(budget_alerts).values(
            budget_id=budget_id, period_key=key, spent_micros=spent, limit_micros=limit, alert_percent=percent,
            created_at=self.ledger.clock()).on_conflict_do_nothing()).rowcount
        s = budget_spend.c
        conn.execute(budget_spend.update().where(s.budget_id == budget_id, s.period_key == key,
                                                 s.alerted_percent < percent).values(alerted_percent=percent))
        if new:
            log.warning("budget %s reached its %s%% alert for %s: %s spent of %s", budget_id, percent, key,
                        usd(spent), usd(limit))

    def _add_spend_of(self, conn, spend: dict[tuple[int, str], int]) -> None:
        """Add each budget period's cost; a period with no row yet starts at the sum of its records (this batch's
        included), as in the SQL ledger, so a budget made mid-period counts the spend already made."""
        s = budget_spend.c
        have = set(conn.execute(select(s.budget_id, s.period_key).where(
            tuple_(s.budget_id, s.period_key).in_(list(spend))))) if spend else set()
        opened = {bk for bk in sorted(spend) if bk not in have and open_period(conn, *bk)}
        rows = [{"budget_id": b, "period_key": k, "spent_micros": c, "reserved_micros": 0, "alerted_percent": 0}
                for (b, k), c in sorted(spend.items()) if (b, k) not in opened]
        if rows:
            conn.execute(self._add_spend, rows)

    def _insert_new(self, conn, rows: list[dict]) -> set[str]:
        """Insert the records not there yet; the request ids of those inserted."""
        if self._unnest is None:
            return set(conn.execute(self._new_records, rows).scalars())
        return set(conn.exec_driver_sql(self._unnest, {c: [r[c] for r in rows] for c in self._columns}).scalars())


def _epoch_s(now: datetime) -> float:
    """The ledger clock's naive UTC time as seconds since the epoch: hold expiry is kept and compared in these."""
    return now.replace(tzinfo=UTC).timestamp()


def _unnest_insert(columns: list[str]) -> str:
    types = {c.name: c.type.compile(dialect=postgresql.dialect()) for c in usage_records.c}
    arrays = ", ".join(f"%({c})s::{types[c]}[]" for c in columns)
    return (f"INSERT INTO usage_records ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT (request_id) DO NOTHING RETURNING request_id")


def _decode(fields: dict) -> dict:
    record = json.loads(fields[b"record"])
    record["created_at"] = datetime.fromisoformat(record["created_at"])
    alerts = fields[b"alerts"].decode()
    return {"record": record, "budgets": [tuple(b) for b in json.loads(fields[b"budgets"])],
            "alerts": [tuple(map(int, a.split(":"))) for a in alerts.split(",") if a]}
