"""Ferryman in front of llama-cpp-python's server against the same server direct: the same greedy requests
(temperature 0; text at a few max_tokens, a forced tool call, JSON mode, logprobs), each whole and streamed, must
give the same text, tool calls (name and arguments; llama-cpp-python makes a fresh call id each time),
finish reason and log-probabilities; a whole answer's usage is passed on and its x-ferryman-cost-usd is usage x
price; a stream (llama-cpp-python sends no usage in one) is billed the catalog tokenizer's count, which is compared
with the server's own count for the same request. Not a speed benchmark (bench/vs_peers.py --upstreams is) and
never run by tests or CI: it needs the llama.cpp build of bench/llamacpp_setup.sh.

    .venv/bin/python bench/llamacpp_interop.py DIR [--record]

--record also writes the direct answers to the recorded requests into tests/transcripts/llamacpp_*.{json,sse},
replayed in CI by tests/gateway/test_llamacpp_transcripts.py.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import free_port, ledger  # noqa: E402
from bench.vs_peers import LLAMACPP_VERSION, llamacpp, start_server, wait_listening  # noqa: E402

PRICE = {"input": 0.5, "output": 1.5}  # USD per 1M tokens
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]
# name -> the request's body (model and stream added); the ones named in RECORDED become transcripts
CASES = {
    "text, max_tokens 1": {"messages": ASK, "temperature": 0, "max_tokens": 1},
    "text, max_tokens 8": {"messages": ASK, "temperature": 0, "max_tokens": 8},
    "text, max_tokens 48": {"messages": ASK, "temperature": 0, "max_tokens": 48},
    "forced tool call": {"messages": ASK, "temperature": 0, "max_tokens": 16, "tools": WEATHER,
                         "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    "JSON mode": {"messages": ASK, "temperature": 0, "max_tokens": 24, "response_format": {"type": "json_object"}},
    "logprobs": {"messages": ASK, "temperature": 0, "max_tokens": 4, "logprobs": True, "top_logprobs": 2},
}
RECORDED = {"llamacpp_text": "text, max_tokens 8", "llamacpp_tools": "forced tool call"}


def post(port: int, body: dict, key: str = "none") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"content-type": "application/json", "authorization": f"Bearer {key}"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def answer(data: bytes, stream: bool) -> dict:
    """What a client makes of an answer: text, tool calls (name, arguments), finish reason, logprobs, usage."""
    chunks = [json.loads(line[5:]) for line in data.splitlines()
              if line.startswith(b"data:") and line.strip() != b"data: [DONE]"] if stream else [json.loads(data)]
    text, calls, finish, logprobs, usage = "", {}, None, [], None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            part = choice.get("delta" if stream else "message") or {}
            text += part.get("content") or ""
            for i, call in enumerate(part.get("tool_calls") or ()):
                got = calls.setdefault(call.get("index", i), ["", ""])
                got[0] = call.get("function", {}).get("name") or got[0]
                got[1] += call.get("function", {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
            logprobs += [(t["token"], round(t["logprob"], 4)) for t in (choice.get("logprobs") or {}).get("content") or ()]
    return {"text": text, "tool calls": [tuple(calls[i]) for i in sorted(calls)], "finish": finish,
            "logprobs": logprobs, "usage": usage and (usage["prompt_tokens"], usage["completion_tokens"])}


def compare(name: str, body: dict, llama: int, ferryman: int, key: str) -> tuple[list[str], list[str], dict]:
    """Mismatches between the direct and the Ferryman answer of one request, whole and streamed; where a stream's
    count (the tokenizer's, of the text as sent) is not the server's own (of the tokens as sampled); the direct bytes."""
    problems, counts, raw, truth = [], [], {}, None
    for stream in (False, True):
        sent = {**body, "model": "llamacpp", "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
        status, _, direct = post(llama, {**sent, "model": "large"})
        fstatus, headers, through = post(ferryman, sent, key)
        raw[stream] = direct
        if (status, fstatus) != (200, 200):
            problems.append(f"{name}, stream={stream}: HTTP {status} direct, {fstatus} through Ferryman: {through[:300]!r}")
            continue
        a, b = answer(direct, stream), answer(through, stream)
        for field in ("text", "tool calls", "finish", "logprobs"):
            if a[field] != b[field]:
                problems.append(f"{name}, stream={stream}: {field} differs: direct {a[field]!r}, Ferryman {b[field]!r}")
        if not stream:
            truth = a["usage"]
            cost = math.ceil(truth[0] * PRICE["input"] + truth[1] * PRICE["output"]) / 1e6 if truth else None
            if b["usage"] != truth or float(headers.get("x-ferryman-cost-usd", "nan")) != cost:
                problems.append(f"{name}: usage {b['usage']} (direct {truth}), cost header "
                                f"{headers.get('x-ferryman-cost-usd')} (usage x price: {cost})")
        else:
            if a["usage"] is not None:
                problems.append(f"{name}: llama-cpp-python sent usage when streaming: {a['usage']}")
            if b["usage"] != truth:
                counts.append(f"{name}: Ferryman's count {b['usage']}, the server's own {truth}")
        print(f"{name:20} stream={stream!s:5} direct {a['text'][:40]!r} {a['tool calls']} {a['finish']} "
              f"usage {a['usage']}; Ferryman usage {b['usage']}", flush=True)
    return problems, counts, raw


def record(raw: dict, name: str, body: dict, version: str) -> None:
    """The direct answers as the server sent them (the whole one and the stream of the same request): the SSE
    with a comment line saying where it came from (the JSON's origin is the same; JSON has no comments)."""
    out = ROOT / "tests" / "transcripts" / name
    out.with_suffix(".json").write_bytes(raw[False] + b"\n")
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    origin = (f": Recorded from llama-cpp-python {version}'s server (python -m llama_cpp.server, bench/vs_peers.py's "
              f"llamacpp() flags, bench/llamacpp_setup.sh's f32 GGUF of models/large) by bench/llamacpp_interop.py "
              f"--record: {json.dumps(body)}\n\n")
    out.with_suffix(".sse").write_bytes(origin.encode() + raw[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="what bench/llamacpp_setup.sh DIR built")
    parser.add_argument("--record", action="store_true", help="also write tests/transcripts/llamacpp_*")
    args = parser.parse_args()
    work, procs = Path(tempfile.mkdtemp(prefix="ferryman-llamacpp-")), []
    try:
        llama = free_port()
        procs.append(llamacpp(args.dir.resolve(), work, llama, alias="large"))
        wait_listening(procs[-1], llama)
        catalog = work / "catalog.yaml"
        catalog.write_text(f"models:\n  - {{name: llamacpp, kind: openai, base_url: 'http://127.0.0.1:{llama}/v1', "
                           f"upstream_model: large, price: {json.dumps(PRICE)}, tokenizer: '{ROOT / 'models/large'}'}}\n")
        url, port = f"sqlite:///{work / 'ledger.db'}", free_port()
        key = ledger(url)
        procs.append(start_server(["--serve-ferryman", str(port), url, str(catalog)], port))
        version = subprocess.run([str(args.dir / "venv/bin/python"), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        problems, counts = [], []
        for name, body in CASES.items():
            found, counted, raw = compare(name, body, llama, port, key)
            problems, counts = problems + found, counts + counted
            for file, case in RECORDED.items():
                if args.record and case == name:
                    record(raw, file, {**body, "model": "large"}, version)
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
    print(f"llama-cpp-python {version} (built for {LLAMACPP_VERSION} by default): "
          + ("identical through Ferryman" if not problems else f"{len(problems)} differences:"))
    for problem in problems:
        print("  " + problem)
    print(f"streams (no usage from the server) billed by the tokenizer's count: {len(CASES) - len(counts)} of "
          f"{len(CASES)} equal the server's own count of the same request; the others:")
    for count in counts:
        print("  " + count)


if __name__ == "__main__":
    main()
