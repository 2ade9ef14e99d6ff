"""Fairness between tenants: another tenant's flood of long generations against one tenant's chat turns.

Tenant B sends short chat turns (Poisson); tenant A floods at t=0.5 s with many long generations, same priority
class. Three modes on the same arrivals: B alone (unloaded), B with A's flood (two tenants: the scheduler's
weighted fair share of seats), and the same requests all from one tenant (what fair sharing prevents: B's turns
queue FIFO behind the flood). Figure: B's p50 latency (arrival to last token) and its ratio to unloaded, median
(min-max) over interleaved rounds, on the real engine (models/small, one thread). A second table runs the same
shape on the capacity simulator (the real Scheduler on an 8B model's H100 step times; deterministic).

    .venv/bin/python bench/tenant_fairness.py                 # 3 rounds, about 2 minutes
    .venv/bin/python bench/tenant_fairness.py --rounds 1 --no-write
"""
from __future__ import annotations

import argparse
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
MODES = ("unloaded", "flood, two tenants (fair share)", "flood, one tenant (FIFO)")


def arrivals(seconds: float, rate: float, flood: int, flood_tokens: int, vocab: int, seed: int) -> list[tuple]:
    """(at, request id, prompt, max_tokens, tenant): B's chat turns and A's flood at t=0.5 s."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        out.append((t, f"b{len(out)}", [rng.randrange(6, vocab) for _ in range(rng.randint(16, 40))], 8, "tB"))
    out += [(0.5, f"a{i}", [rng.randrange(6, vocab) for _ in range(48)], flood_tokens, "tA") for i in range(flood)]
    return sorted(out)


def run(engine: LLMEngine, plan: list[tuple], mode: str, deadline: float) -> list[float]:
    """Replay in real time; B's latencies (a turn unfinished at the deadline counts its wait so far)."""
    plan = [a for a in plan if a[4] == "tB" or mode != MODES[0]]
    pending, at = list(reversed(plan)), {a[1]: a[0] for a in plan}
    open_b, latencies = {a[1] for a in plan if a[4] == "tB"}, []
    start = time.perf_counter()
    while open_b and (now := time.perf_counter() - start) < deadline:
        while pending and pending[-1][0] <= now:
            t, request_id, prompt, max_tokens, tenant = pending.pop()
            salt = "tA" if mode == MODES[2] else tenant
            engine.add_request(request_id, prompt, SamplingParams(max_tokens=max_tokens, temperature=0,
                                                                  ignore_eos=True), cache_salt=salt)
        if not engine.has_unfinished():
            time.sleep(max(0.0, pending[-1][0] - now))
            continue
        for out in engine.step():
            if out.finished and out.request_id in open_b:
                open_b.discard(out.request_id)
                latencies.append(time.perf_counter() - start - at[out.request_id])
    latencies += [time.perf_counter() - start - at[r] for r in open_b]
    for request_id in list(engine.seqs):
        engine.abort(request_id)
    return latencies


def simulated() -> list[list]:
    """The tests' shape on the simulator: B's turns (64 in, 32 out, 4/s) and A's 200 x 1,000-token flood."""
    rng, chat, t = random.Random(1), [], 0.0
    while (t := t + rng.expovariate(4.0)) < 20:
        chat.append(Request(t, 64, 32, seed=len(chat), tenant="B"))
    flood = [Request(1.0 + i / 1000, 64, 1000, seed=10_000 + i, tenant="A") for i in range(200)]
    model = StepModel(MODELS["llama-3-8b"], "bf16", GPUS["h100-sxm"])
    knobs = EngineKnobs(max_num_seqs=16, max_num_batched_tokens=512, num_blocks=4000)
    rows, base = [], None
    for mode, requests in ((MODES[0], chat), (MODES[1], chat + flood),
                           (MODES[2], [Request(r.arrival, 64, 32, seed=r.seed, tenant="A") for r in chat] + flood)):
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
    plan = arrivals(args.seconds, args.rate, args.flood, args.flood_tokens, engine.config.hf_config["vocab_size"], 0)
    p50s = {mode: [] for mode in MODES}
    for _ in range(args.rounds):  # interleaved: every mode once per round
        for mode in MODES:
            p50s[mode].append(statistics.median(run(engine, plan, mode, args.seconds + 10)) * 1e3)
    ratios = {m: [v / u for v, u in zip(p50s[m], p50s[MODES[0]])] for m in MODES}
    rows = [[m, spread(p50s[m], 1), spread(ratios[m]) + "x"] for m in MODES]
    real = table(["mode", "B's p50 latency ms", "vs unloaded"], rows)
    sim = table(["mode", "B's p50 latency ms", "vs unloaded"], simulated())
    print(real, "\n\n" + sim)
    if not args.no_write:
        command = f"python bench/tenant_fairness.py --rounds {args.rounds}"
        body = (f"Real engine, models/small on one thread, max_num_seqs {KNOBS['max_num_seqs']}: B's chat turns "
                f"({args.rate:g}/s for {args.seconds:g} s, 8 tokens each) and A's flood of {args.flood} x "
                f"{args.flood_tokens}-token generations at t=0.5 s; median (min-max) over {args.rounds} interleaved "
                f"rounds on a shared, loaded 2-core box. A turn unfinished 10 s after the window counts its wait so far (the FIFO row is a lower bound).\n\n{real}\n\nSimulator (the real Scheduler on llama-3-8b "
                f"bf16 / H100 step times, max_num_seqs 16; deterministic; the shape of "
                f"tests/engine/test_fairness.py): B 4/s x 32 tokens, A 200 x 1,000 tokens at t=1 s.\n\n{sim}\n\n"
                "Target (issue 26.7): B's p50 within 1.5x of unloaded under A's flood. Fair sharing gives B a seat "
                "at once in both; what remains is the step itself growing with the batch. On a GPU (the simulator's "
                "step times, memory-bound decode) that costs little; on this CPU a step of 8 sequences, some "
                "prefilling A's prompts, costs far more than B's alone, so the real-engine row can exceed 1.5x.")
        write_section("tenant_fairness", "Fairness between tenants: a flood of long generations", command, body)


if __name__ == "__main__":
    main()
