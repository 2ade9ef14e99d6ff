"""Fairness between tenants: another tenant's flood of long generations against one tenant's chat turns.

Tenant B sends short chat turns (Poisson); tenant A floods at t=0.5 s with many long generations, same priority
class. Four modes on the same arrivals: B alone (unloaded); B with A's flood as two tenants, with the scheduler's
weighted fair share of seats and of each step's sequences, and with the seats alone; and the same requests all from
one tenant (what fair sharing prevents: B's turns queue FIFO behind the flood). Figures: B's p50 latency (arrival
to last token) and its ratio to unloaded, median (min-max) over interleaved rounds, and where B's time goes (the step
in progress at arrival, waiting for a seat, its own prefill and decode steps, the batch it shared), on the real
engine (models/small, one thread). A second table runs the same shape on the capacity simulator (the real Scheduler
on an 8B model's H100 step times; deterministic).

    .venv/bin/python bench/tenant_fairness.py                 # 3 rounds, about 3 minutes
    .venv/bin/python bench/tenant_fairness.py --rounds 1 --no-write
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import SamplingParams  # noqa: E402
from backends.engine import EngineConfig, LLMEngine  # noqa: E402
from backends.engine.capacity.hardware import GPUS, MODELS  # noqa: E402
from backends.engine.capacity.simulator import EngineKnobs, simulate  # noqa: E402
from backends.engine.capacity.step_time import StepModel  # noqa: E402
from backends.engine.capacity.workload import Request  # noqa: E402
from bench.report import spread, table, write_section  # noqa: E402

KNOBS = dict(max_num_seqs=8, max_num_batched_tokens=128, num_kv_blocks=2048, block_size=16, num_threads=1)
MODES = ("unloaded", "flood, two tenants (fair seats and steps)", "flood, two tenants (fair seats only)",
         "flood, one tenant (FIFO)")
PARTS = ("step in progress at arrival", "waiting for a seat", "own prefill steps", "own decode steps")


def arrivals(seconds: float, rate: float, flood: int, flood_tokens: int, vocab: int, seed: int) -> list[tuple]:
    """(at, request id, prompt, max_tokens, tenant): B's chat turns and A's flood at t=0.5 s."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        out.append((t, f"b{len(out)}", [rng.randrange(6, vocab) for _ in range(rng.randint(16, 40))], 8, "tB"))
    out += [(0.5, f"a{i}", [rng.randrange(6, vocab) for _ in range(48)], flood_tokens, "tA") for i in range(flood)]
    return sorted(out)


def run(engine: LLMEngine, plan: list[tuple], mode: str, deadline: float) -> tuple[list[float], list[dict]]:
    """Replay in real time; B's latencies (a turn unfinished at the deadline counts its wait so far) and where each
    finished turn's time went (breakdown())."""
    plan = [a for a in plan if a[4] == "tB" or mode != MODES[0]]
    engine.scheduler.fair_step_share = mode != MODES[2]
    pending, at = list(reversed(plan)), {a[1]: a[0] for a in plan}
    open_b, latencies, steps = {a[1] for a in plan if a[4] == "tB"}, [], []
    start = time.perf_counter()
    while open_b and (now := time.perf_counter() - start) < deadline:
        while pending and pending[-1][0] <= now:
            t, request_id, prompt, max_tokens, tenant = pending.pop()
            salt = "tA" if mode == MODES[3] else tenant
            engine.add_request(request_id, prompt, SamplingParams(max_tokens=max_tokens, temperature=0,
                                                                  ignore_eos=True), cache_salt=salt)
        if not engine.has_unfinished():
            time.sleep(max(0.0, pending[-1][0] - now))
            continue
        step_start = time.perf_counter() - start
        outputs = engine.step()
        steps.append((step_start, time.perf_counter() - start, engine.scheduler.last_plan))
        for out in outputs:
            if out.finished and out.request_id in open_b:
                open_b.discard(out.request_id)
                latencies.append(time.perf_counter() - start - at[out.request_id])
    latencies += [time.perf_counter() - start - at[r] for r in open_b]
    for request_id in list(engine.seqs):
        engine.abort(request_id)
    return latencies, [breakdown(steps, r, at[r]) for r in at if r.startswith("b") and r not in open_b]


def trace_plans(engine: LLMEngine) -> None:
    """Keep each step's plan as {request id: tokens computed} in engine.scheduler.last_plan, for breakdown()."""
    schedule = engine.scheduler.schedule

    def traced():
        plan = schedule()
        engine.scheduler.last_plan = {seq.request_id: n for seq, n in plan.batch}
        return plan

    engine.scheduler.schedule = traced


def breakdown(steps: list[tuple], request_id: str, arrival: float) -> dict:
    """One finished turn's time, arrival to its last step's end, in PARTS (seconds) and its steps' mean batch size."""
    mine = [(t0, t1, batch) for t0, t1, batch in steps if request_id in batch]
    landing = next((t1 - arrival for t0, t1, _ in steps if t0 < arrival < t1), 0.0)
    seat = sum(t1 - t0 for t0, t1, _ in steps if arrival <= t0 < mine[0][0])
    prefill = sum(t1 - t0 for t0, t1, batch in mine if batch[request_id] > 1)
    decode = sum(t1 - t0 for t0, t1, batch in mine if batch[request_id] == 1)
    batch = statistics.mean(len(b) for _, _, b in mine if b[request_id] == 1)
    return dict(zip(PARTS, (landing, seat, prefill, decode))) | {"batch": batch}


def simulated() -> list[list]:
    """The tests' shape on the simulator: B's turns (64 in, 32 out, 4/s) and A's 200 x 1,000-token flood."""
    rng, chat, t = random.Random(1), [], 0.0
    while (t := t + rng.expovariate(4.0)) < 20:
        chat.append(Request(t, 64, 32, seed=len(chat), tenant="B"))
    flood = [Request(1.0 + i / 1000, 64, 1000, seed=10_000 + i, tenant="A") for i in range(200)]
    model = StepModel(MODELS["llama-3-8b"], "bf16", GPUS["h100-sxm"])
    knobs = EngineKnobs(max_num_seqs=16, max_num_batched_tokens=512, num_blocks=4000)
    rows, base = [], None
    for mode, requests in (("unloaded", chat), ("flood, two tenants (fair share)", chat + flood),
                           ("flood, one tenant (FIFO)",
                            [Request(r.arrival, 64, 32, seed=r.seed, tenant="A") for r in chat] + flood)):
        result = simulate(sorted(requests, key=lambda r: r.arrival), model, knobs)
        p50 = float(np.median([(r.last_token if r.finished else result.end) - r.request.arrival
                               for r in result.records if r.request.seed < 10_000])) * 1e3
        base = base or p50
        rows.append([mode, f"{p50:,.1f}", f"{p50 / base:.2f}x"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "small"))
    ap.add_argument("--seconds", type=float, default=8.0, help="B's arrival window")
    ap.add_argument("--rate", type=float, default=4.0, help="B's turns per second")
    ap.add_argument("--flood", type=int, default=64, help="A's long generations, all at t=0.5 s")
    ap.add_argument("--flood-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    engine = LLMEngine(EngineConfig(args.model, **KNOBS))
    engine.generate([[6, 7, 8]], SamplingParams(max_tokens=4))  # warm-up
    trace_plans(engine)
    plan = arrivals(args.seconds, args.rate, args.flood, args.flood_tokens, engine.config.hf_config["vocab_size"], 0)
    p50s, parts, load = {mode: [] for mode in MODES}, {mode: [] for mode in MODES[:3]}, [os.getloadavg()[0]]
    for _ in range(args.rounds):  # interleaved: every mode once per round
        for mode in MODES:
            latencies, turns = run(engine, plan, mode, args.seconds + 10)
            p50s[mode].append(statistics.median(latencies) * 1e3)
            if mode in parts:
                parts[mode].append({k: statistics.median(t[k] for t in turns) for k in turns[0]})
    load.append(os.getloadavg()[0])
    sim = table(["mode", "B's p50 latency ms", "vs unloaded"], simulated())
    real, where = real_table(p50s), breakdown_table(parts)
    print(real, "\n\n" + where, "\n\n" + sim, f"\n\nload average (1 min) {load[0]:.1f} at start, {load[1]:.1f} at end")
    if not args.no_write:
        write(args, real, where, sim, load)


def real_table(p50s: dict[str, list[float]]) -> str:
    ratios = {m: [v / u for v, u in zip(p50s[m], p50s[MODES[0]])] for m in MODES}
    rows = [[m, spread(p50s[m], 1), spread(ratios[m]) + "x"] for m in MODES]
    return table(["mode", "B's p50 latency ms", "vs unloaded"], rows)


def breakdown_table(parts: dict[str, list[dict]]) -> str:
    """Per mode: the median turn's ms in each part and its decode steps' mean batch, median (min-max) over rounds."""
    rows = [[m] + [spread([r[k] * 1e3 for r in rounds], 1) for k in PARTS] + [spread([r["batch"] for r in rounds], 1)]
            for m, rounds in parts.items()]
    return table(["mode"] + [f"{k} ms" for k in PARTS] + ["sequences per decode step"], rows)


def write(args: argparse.Namespace, real: str, where: str, sim: str, load: list[float]) -> None:
    command = f"python bench/tenant_fairness.py --rounds {args.rounds}"
    body = (f"Real engine, models/small on one thread, max_num_seqs {KNOBS['max_num_seqs']}: B's chat turns "
            f"({args.rate:g}/s for {args.seconds:g} s, 8 tokens each) and A's flood of {args.flood} x "
            f"{args.flood_tokens}-token generations at t=0.5 s; median (min-max) over {args.rounds} interleaved "
            f"rounds on a shared 2-core box (load average {load[0]:.1f} at the start, {load[1]:.1f} at the end). "
            "A turn unfinished 10 s after the window counts its wait so far (the FIFO row is a lower bound). "
            "'Fair seats only' is the same engine with the step share off (fair_step_share False): what the "
            f"seat share alone gave.\n\n{real}\n\nWhere a finished turn's time goes (the median turn of each "
            "round, median (min-max) over rounds): the step already running when it arrived, steps run before it "
            "had a seat, its own prefill and decode steps; and how many sequences shared its decode steps.\n\n"
            f"{where}\n\nSimulator (the real Scheduler on llama-3-8b bf16 / H100 step times, max_num_seqs 16; "
            "deterministic; the shape of tests/engine/test_fairness.py)"
            f": B 4/s x 32 tokens, A 200 x 1,000 tokens at t=1 s.\n\n{sim}\n\n"
            + NOTE)
    write_section("tenant_fairness", "Fairness between tenants: a flood of long generations", command, body)


NOTE = ("Target (issue 26.7): B's p50 within 1.5x of unloaded under A's flood. The seat share gives B a seat at once; "
        "what it leaves is the step growing with the batch and its context: on this CPU (a 4-layer model, one "
        "thread) a decode step of B's with A's 7 long generations costs about twice one of B's alone. The step share "
        "(backends/engine/scheduler.py) lets A add to a step B is in no more sequences than B has in it (equal "
        "weights), and its first one always; the step of A's already running when a turn lands is not shared. "
        "Under heavy load from other processes a step's wall time is mostly waiting for a core, which batching does "
        "not change, so the gap the share closes shrinks with the load (compare the rows at the load shown).")


if __name__ == "__main__":
    main()
