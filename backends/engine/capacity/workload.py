"""Workloads for the simulator: arrival times, prompt and output lengths, priority classes, shared prefixes.

Generated (Poisson or bursty arrivals, log-normal lengths) or read from a JSONL file, one request a line:
{"arrival": s, "prompt_len": n, "output_len": n, "priority": 0|1|2, "prefix_group": id|null, "prefix_len": n}
(optionally "tenant": name and "weight": n, the tenant's fair-share weight).
Token ids are made from the request's seed when the simulator needs them, so a workload stays small; requests of
one prefix group start with the same prefix_len tokens (a shared system prompt or document), which the real
BlockManager then finds in its prefix cache.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

FIRST_ID = 6  # token ids below this are the bundled tokenizer's special tokens


@dataclass
class Request:
    arrival: float  # seconds after the start
    prompt_len: int
    output_len: int
    priority: int = 1  # 0 interactive, 1 standard, 2 batch
    prefix_group: int | None = None
    prefix_len: int = 0  # leading prompt tokens shared with every request of prefix_group
    seed: int = 0
    tenant: str | None = None  # the cache_salt: prefix cache partition and fair-share tenant in the Scheduler
    weight: int = 1  # the tenant's weight in the fair share of seats

    def prompt_ids(self, vocab: int) -> list[int]:
        prefix = random.Random(f"prefix-{self.prefix_group}") if self.prefix_group is not None else None
        own = random.Random(self.seed)
        return [(prefix if prefix and i < self.prefix_len else own).randrange(FIRST_ID, vocab) for i in range(self.prompt_len)]


@dataclass(frozen=True)
class Mix:
    name: str
    prompt_median: float
    prompt_sigma: float  # of log(length)
    output_median: float
    output_sigma: float
    priority_shares: tuple[float, float, float]  # interactive, standard, batch
    prefix_share: float  # fraction of requests that start with one of the shared prefixes
    prefix_len: int
    prefix_groups: int
    source: str


MIXES = {
    "chat": Mix(
        "chat", 98, 1.0, 245, 0.8, (0.6, 0.3, 0.1), 0.5, 128, 8,
        "ShareGPT conversations as vLLM's paper (Kwon et al., SOSP 2023, Fig. 11) reports them: mean prompt 161, mean "
        "output 338 tokens; log-normal with those means. Half the requests carry one of 8 shared 128-token system prompts."),
    "rag": Mix(
        "rag", 4000, 0.35, 300, 0.6, (0.3, 0.5, 0.2), 0.8, 512, 4,
        "Long-context retrieval: ~8 retrieved chunks of ~500 tokens plus the question, a short answer; centred on the "
        "5,000-in / 500-out case NVIDIA's NIM benchmarks use for long-input work. 80% share one of 4 512-token "
        "instruction prefixes."),
}


def generate(mix: Mix, rate: float, duration: float, seed: int = 0, arrival: str = "poisson", burstiness: float = 3.0,
             max_len: int = 8192) -> list[Request]:
    """Requests arriving over `duration` seconds at `rate` per second on average.

    "bursty": gamma inter-arrival times with coefficient of variation `burstiness` (Poisson has 1), same mean."""
    rng = random.Random(seed)
    shape = 1 / burstiness**2 if arrival == "bursty" else 1.0
    requests, t = [], 0.0
    while True:
        t += rng.gammavariate(shape, 1 / (rate * shape))
        if t >= duration:
            return requests
        requests.append(_request(mix, rng, t, max_len, len(requests) + 1_000_003 * seed))


def _request(mix: Mix, rng: random.Random, t: float, max_len: int, request_seed: int) -> Request:
    output = _lognormal(rng, mix.output_median, mix.output_sigma, 1, max_len // 4)
    prompt = _lognormal(rng, mix.prompt_median, mix.prompt_sigma, 1, max_len - output)
    priority = rng.choices((0, 1, 2), weights=mix.priority_shares)[0]
    group = rng.randrange(mix.prefix_groups) if rng.random() < mix.prefix_share else None
    prefix_len = min(mix.prefix_len, max_len - output - 1) if group is not None else 0
    return Request(t, max(prompt, prefix_len + 1) if group is not None else prompt, output, priority, group,
                   prefix_len, request_seed)


def _lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return int(min(high, max(low, round(math.exp(rng.gauss(math.log(median), sigma))))))


def save(requests: list[Request], path: Path) -> None:
    Path(path).write_text("".join(json.dumps(asdict(r)) + "\n" for r in requests))


def load(path: Path) -> list[Request]:
    requests = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            fields = json.loads(line)
            requests.append(Request(**{"seed": i, **fields}))
    return sorted(requests, key=lambda r: r.arrival)
