"""What the SQL ledger's money path costs a request in CPU: reserve + settle (two SQLite transactions), back to back
and after an idle wait, beside its floor: the same SQL statements with the same values from bare sqlite3, none of
our Python around them.

The wait is what an upstream that takes milliseconds imposes: the gateway's process sleeps between reserving and
settling, and on a shared virtual machine its caches go cold meanwhile (issue 27: the same gateway spends about twice
the CPU per request in front of an upstream that answers after 8 ms as in front of one that answers at once). The
CPU of a wait with nothing after it is measured in the same round and taken off. Interleaved rounds; median
(min-max) over rounds.

    .venv/bin/python bench/ledger_cost.py [--rounds 5] [--wait-ms 8]   # writes its section of docs/BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import ledger  # noqa: E402
from bench.report import spread, table, write_section  # noqa: E402
from billing import rules  # noqa: E402

PROMPT_TOKENS, MAX_TOKENS, COMPLETION_TOKENS = 20, 16, 9


def setup(url: str):
    """The ledger as the gateway runs it (one tenant, its budget, a priced model) and its principal."""
    from billing import Billing

    key = ledger(url)
    billing = Billing(url)
    billing.set_price("bench", input_micros_per_m=500_000, cached_input_micros_per_m=500_000,
                      output_micros_per_m=1_500_000)
    return billing, billing.authenticate(key)


def ours(billing, principal):
    """One request's money path through billing/ledger.py."""
    sql = billing.ledger

    def request() -> None:
        hold = sql._reserve(principal, f"req-{uuid.uuid4().hex}", "bench", PROMPT_TOKENS, MAX_TOKENS)
        sql._settle(hold, prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS, latency_ms=1.0,
                    route="bench", status="ok")
    return request


def floor(billing, principal, path: str):
    """The same statements with the same values (taken from one request of ours) on a bare sqlite3 connection."""
    sql = billing.ledger
    hold = sql._reserve(principal, "req-floor", "bench", PROMPT_TOKENS, MAX_TOKENS)
    record = vars(sql.usage_record(hold, prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS,
                                   latency_ms=1.0, route="bench", status="ok"))
    sql._settle(hold, prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS)
    budget = principal.tenant_budget
    period, stamp, spend = rules.period_key(budget.period, sql.clock()), str(record["created_at"]), hold.spend_ids[0]
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        connection.execute(f"PRAGMA {pragma}")

    def args(prepared, **values):
        values = {**prepared.literals, **values}
        return [values[name] for name, _ in prepared.places]

    def request() -> None:
        rid, cursor = f"req-{uuid.uuid4().hex}", connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(sql._hold_sql.sql, args(sql._hold_sql, budget=budget.id, period=period,
                                              amount=hold.amount_micros)).fetchone()
        cursor.execute(sql._new_reservation.sql, args(
            sql._new_reservation, request_id=rid, tenant_id=principal.tenant_id, key_id=principal.key_id,
            model="bench", amount_micros=hold.amount_micros, tenant_spend_id=spend, key_spend_id=None,
            created_at=stamp, expires_at=stamp))
        cursor.execute("COMMIT")
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(sql._new_record.sql, args(sql._new_record, **{**record, "request_id": rid,
                                                                    "created_at": stamp})).fetchone()
        cursor.execute(sql._release_sql.sql, args(sql._release_sql, rid=rid))
        cursor.execute(sql._spend_sql.sql, args(sql._spend_sql, spend=spend, amount=hold.amount_micros,
                                               cost=record["cost_micros"])).fetchone()
        cursor.execute("COMMIT")
    return request


def cpu_ms(request, n: int, wait_s: float) -> float:
    start = time.process_time()
    for _ in range(n):
        if wait_s:
            time.sleep(wait_s)
        request()
    return (time.process_time() - start) / n * 1000


def main(rounds: int, wait_ms: float, n: int) -> None:
    work = tempfile.mkdtemp(prefix="ledger-cost-")
    billing, principal = setup(f"sqlite:///{work}/ledger.db")
    paths = {"billing/ledger.py (reserve + settle)": ours(billing, principal),
             "floor: the same SQL from bare sqlite3": floor(billing, principal, f"{work}/ledger.db")}
    for request in paths.values():  # warm: imports, statement caches, the first pages
        cpu_ms(request, 200, 0)
    modes = {"back to back": 0.0, f"after {wait_ms:g} ms idle": wait_ms / 1000}
    results: dict = {}
    for r in range(rounds):
        for mode, wait_s in modes.items():
            idle = cpu_ms(lambda: None, n // 2, wait_s) if wait_s else 0.0
            for name, request in paths.items():
                results.setdefault((name, mode), []).append(cpu_ms(request, n, wait_s) - idle)
        print(f"round {r + 1}: " + ", ".join(f"{k[0][:12]} {k[1]} {v[-1]:.3f}" for k, v in results.items()),
              flush=True)
    billing.close()
    report(rounds, wait_ms, n, paths, modes, results)


def report(rounds: int, wait_ms: float, n: int, paths: dict, modes: dict, results: dict) -> None:
    ours_name, floor_name = paths
    rows = [[name, *(spread(results[name, mode], 3) for mode in modes)] for name in paths]
    rows.append(["ours / floor", *(spread([a / b for a, b in zip(results[ours_name, mode], results[floor_name, mode])])
                                   for mode in modes)])
    result = table(["CPU ms per request", *modes], rows)
    print(result)
    body = f"""
The money path of a request on the default ledger (SQLite, one tenant with a budget, a key, a priced model):
a hold (`reserve`: the budget's conditional update and the reservation row, one transaction) and its settlement
(`settle`: the usage record, the reservation deleted, the hold turned into spend, one transaction), called as the
gateway calls them. The floor runs the same SQL statements with the same values on a bare sqlite3 connection to
the same database file: what SQLite itself costs. "after {wait_ms:g} ms idle": each request comes after a sleep, as
behind an upstream that answers in {wait_ms:g} ms, less the CPU of such a sleep with nothing after it. {n} requests
per cell, {rounds} interleaved rounds, median (min-max) of the rounds; CPU time of this process (user + system).

{result}
"""
    write_section("ledger_cost", "The SQL ledger's money path: CPU per request", "python bench/ledger_cost.py", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wait-ms", type=float, default=8.0)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    main(args.rounds, args.wait_ms, args.requests)
