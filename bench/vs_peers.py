"""Ferryman side by side with its peers, one command, one run, interleaved rounds, all on loopback.

    .venv/bin/python bench/vs_peers.py [--rounds 3] [--postgres postgresql+psycopg://root@127.0.0.1:5432/test]
        [--redis redis://127.0.0.1:6379/0]
    .venv/bin/python bench/vs_peers.py --engines [--rounds 3]

Gateways (default): a mock OpenAI-compatible upstream (raw asyncio, a fixed answer); in front of it Ferryman
on a SQLite ledger and on a PostgreSQL ledger (a catalog with one `kind: openai` model), the incumbent
open-source gateway (LiteLLM proxy, installed by the bench into .bench-venv/litellm from PyPI, no database,
a master key), a minimal asyncio forwarder (one kept-alive upstream connection per client connection), and
the upstream direct. Each server is its own process; the load generator is a keep-alive HTTP/1.1 client in
this one. Non-streaming chat at concurrency 1 and 32, streaming at concurrency 1 (time to first content
chunk, gap between content chunks). A round runs every scenario on every server in turn.

Engines: our engine (fp32 weights, int8 weights), CTranslate2 (float32, int8) and Hugging Face `generate`
on the same 64 mixed-length prompts (held-out text, 8 to 120 tokens), 64 new tokens each, greedy, EOS
ignored, one thread each, each engine in its own process. A round runs every engine once, one after the
other (rounds interleave, so load from other processes falls on all alike). Reported: generated tokens/s
over the whole workload (prefill included), median and min-max over rounds; and how many of the 64 requests
produced exactly HF generate's (fp32) tokens. CTranslate2 is never a project dependency: the bench installs
it from PyPI into its own virtual environment (.bench-venv/ct2) and converts models/large there with
CTranslate2's own converter.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import table, write_section  # noqa: E402

MODEL = ROOT / "models" / "large"
BENCH_VENV = ROOT / ".bench-venv"
CT2_VERSION = "4.8.5"
LITELLM_VERSION = "1.80.0"
LITELLM_KEY = "sk-bench-master"
PROMPTS, NEW_TOKENS = 64, 64
ENGINES = ("ours-fp32", "ours-int8", "ct2-float32", "ct2-int8", "hf-generate")


# --- the engine workers: each a process that loads once, then runs the workload per "run" line ----------

def ours(quantization: str | None):
    from backends.base import SamplingParams
    from backends.engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model=str(MODEL), quantization=quantization, num_threads=1))
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    return lambda prompts: [o.token_ids for o in engine.generate(prompts, params)]


def ct2(compute_type: str, model_dir: str):
    import ctranslate2

    generator = ctranslate2.Generator(model_dir, device="cpu", compute_type=compute_type, intra_threads=1,
                                      inter_threads=1)
    vocab = json.loads((MODEL / "tokenizer.json").read_text())["model"]["vocab"]
    names = {i: t for t, i in vocab.items()}

    def run(prompts):
        results = generator.generate_batch([[names[i] for i in p] for p in prompts], max_length=NEW_TOKENS,
                                           sampling_topk=1, include_prompt_in_result=False, end_token=[])
        return [r.sequences_ids[0] for r in results]
    return run


def hf_generate():
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()

    def run(prompts):
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left padding, masked out
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=0,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[:, width:].tolist()
    return run


def engine_worker(name: str, prompts_file: str, ct2_dir: str) -> None:
    prompts = json.loads(Path(prompts_file).read_text())
    kind, _, variant = name.partition("-")
    run = {"ours": lambda: ours(None if variant == "fp32" else variant), "ct2": lambda: ct2(variant, ct2_dir),
           "hf": hf_generate}[kind]()
    run(prompts[:4])  # warm-up: first-call allocations, weight packing
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        tokens = run(prompts)
        print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens}), flush=True)


# --- the gateway servers (each a subprocess of this script) -----------------------------------------------

CHUNKS = 8  # content chunks of the mock's streamed answer
ANSWER = {"id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": "mock",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(f"w{i} " for i in range(CHUNKS))},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 24, "completion_tokens": CHUNKS, "total_tokens": 24 + CHUNKS}}


def _event(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    chunk = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "mock",
             "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}
    data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def mock_stream() -> list[bytes]:
    """The streamed answer as HTTP chunks, one SSE event each: role, content, finish, usage-only, [DONE]."""
    events = [_event({"role": "assistant", "content": ""})]
    events += [_event({"content": f"w{i} "}) for i in range(CHUNKS)]
    events += [_event({}, "stop"), _event({}, usage=ANSWER["usage"]), b"e\r\ndata: [DONE]\n\n\r\n", b"0\r\n\r\n"]
    return events


async def read_request(reader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    return head, await reader.readexactly(length)


def serve_mock(port: int, delay_ms: int = 0) -> None:
    """An OpenAI-compatible upstream that answers at once: what a proxy adds is all that is measured. `delay_ms`:
    it answers after that long idle instead (a real upstream's latency without its CPU)."""
    import asyncio

    whole = json.dumps(ANSWER).encode()
    whole = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(whole), whole)
    stream = mock_stream()
    stream_head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

    async def client(reader, writer):
        try:
            while True:
                _, body = await read_request(reader)
                if delay_ms:
                    await asyncio.sleep(delay_ms / 1000)
                if b'"stream":true' in body.replace(b" ", b""):
                    writer.write(stream_head)
                    for chunk in stream:
                        writer.write(chunk)
                        await writer.drain()
                else:
                    writer.write(whole)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(client, "127.0.0.1", port)
        await server.serve_forever()
    asyncio.run(main())


def serve_threaded(port: int, style: str) -> None:
    """Python's http.server in one of tests/upstream_styles.py's socket habits, answering the mock's answer."""
    from http.server import ThreadingHTTPServer

    from tests.upstream_styles import handler

    ThreadingHTTPServer(("127.0.0.1", port), handler(style, lambda body: ANSWER)).serve_forever()


def serve_forwarder(port: int, upstream_port: int) -> None:
    """The minimal proxy: bytes through, one kept-alive upstream connection per client connection."""
    import asyncio

    async def relay_response(up_reader, writer):
        head = await up_reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        if b"chunked" not in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            writer.write(await up_reader.readexactly(length))
            return
        while True:
            size_line = await up_reader.readuntil(b"\r\n")
            data = await up_reader.readexactly(int(size_line, 16) + 2)
            writer.write(size_line + data)
            await writer.drain()
            if size_line == b"0\r\n":
                return

    async def client(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        try:
            while True:
                head, body = await read_request(reader)
                up_writer.write(head + body)
                await relay_response(up_reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            up_writer.close()

    async def main():
        server = await asyncio.start_server(client, "127.0.0.1", port)
        await server.serve_forever()
    asyncio.run(main())


def serve_fastapi_floor(port: int, upstream_port: int) -> None:
    """What any FastAPI gateway costs before a gateway's own work (auth, limits, routing, ledger): the request
    parsed into Ferryman's own request model, re-serialised and sent on a kept-alive pooled upstream connection
    (backends/wire.py), the answer passed back whole or streamed. Ferryman minus this = Ferryman's own work."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response, StreamingResponse

    from backends.wire import Pool
    from gateway.schemas import ChatCompletionRequest

    app, pools = FastAPI(), []

    async def chat(body):
        if not pools:
            pools.append(Pool(f"http://127.0.0.1:{upstream_port}/v1", {}, timeout_s=30, connect_timeout_s=5,
                              max_connections=64))
        data = body.model_dump_json(exclude_none=True).encode()
        if not body.stream:
            answer, whole = await pools[0].post("/chat/completions", data)
            return Response(whole, status_code=answer.status, media_type="application/json")

        async def relay():
            async with pools[0].stream("/chat/completions", data) as (_, chunks):
                async for chunk in chunks:
                    yield chunk
        return StreamingResponse(relay(), media_type="text/event-stream")

    chat.__annotations__["body"] = ChatCompletionRequest  # the class itself: this module's annotations are strings
    app.post("/v1/chat/completions")(chat)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def serve_asgi_floor(port: int, upstream_port: int) -> None:
    """Below any framework: a bare ASGI app on the same server (uvicorn, httptools, uvloop) relaying the body as it
    came over the same upstream client, no parsing. What a Python ASGI gateway costs before reading a request."""
    import uvicorn

    from backends.wire import Pool

    pools = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if not pools:
            pools.append(Pool(f"http://127.0.0.1:{upstream_port}/v1", {}, timeout_s=30, connect_timeout_s=5,
                              max_connections=64))
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        async with pools[0].stream("/chat/completions", body) as (answer, chunks):
            kind = answer.headers.get("content-type", "application/json").encode()
            await send({"type": "http.response.start", "status": answer.status, "headers": [(b"content-type", kind)]})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def serve_ferryman(port: int, database_url: str, catalog_file: str, redis_url: str = "") -> None:
    from gateway import catalog
    from gateway.app import create_app
    from gateway.config import Settings
    from gateway.drain import serve

    # With Redis: rate limits and budget holds there, records written in batches (the multi-replica configuration).
    settings = Settings(database_url=database_url, config=Path(catalog_file), redis_url=redis_url or None,
                        redis_prefix=f"ferryman-bench-{port}")
    app = create_app(settings, catalog=catalog.load(Path(catalog_file)))
    serve(app, "127.0.0.1", port)  # as `ferryman serve` runs it: its HTTP protocol, draining server


def ferryman_catalog(work: Path, upstream_port: int) -> Path:
    path = work / "catalog.yaml"
    path.write_text(f"""models:
  - name: mock
    kind: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    price: {{input: 0.5, output: 1.5}}
""")
    return path


def litellm(work: Path, upstream_port: int, port: int, pin: tuple[str, ...] = ()) -> subprocess.Popen:
    python = bench_python("litellm", with_ours=False)
    if subprocess.run([str(python), "-c", "import litellm.proxy.proxy_server"], capture_output=True).returncode:
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {python.parent.parent}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    config = work / "litellm.yaml"
    config.write_text(f"""model_list:
  - model_name: mock
    litellm_params: {{model: openai/mock, api_base: "http://127.0.0.1:{upstream_port}/v1", api_key: sk-upstream}}
general_settings: {{master_key: {LITELLM_KEY}}}
""")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    return subprocess.Popen([*pin, str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                             "--port", str(port), "--num_workers", "1"], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / "litellm.log", "w"))


def llamacpp(directory: Path, work: Path, port: int, alias: str = "mock", pin: tuple[str, ...] = ()) -> subprocess.Popen:
    """llama-cpp-python's server (bench/llamacpp_setup.sh builds it into `directory`) on the GGUF of models/large,
    named `mock` as every upstream here; one thread: the box's other core is the client's and Ferryman's. Without
    --interrupt_requests false it ends a stream in flight (no finish reason) when any request comes, a probe too."""
    return subprocess.Popen([*pin, str(directory / "venv" / "bin" / "python"), "-m", "llama_cpp.server", "--model",
                             str(directory / "gguf" / "large-f32.gguf"), "--model_alias", alias, "--n_ctx", "512",
                             "--n_threads", "1", "--n_threads_batch", "1", "--interrupt_requests", "false", "--verbose",
                             "false", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=open(work / "llamacpp.log", "w"))


# --- the gateway load: a keep-alive HTTP/1.1 client, so the client is not what gets measured -------------

CONTENT = re.compile(rb'"content":\s*"[^"]')


def chat_request(key: str, stream: bool, model: str = "mock") -> bytes:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say something short."}],
                       "max_tokens": 16, "temperature": 0, "stream": stream}).encode()  # greedy: the same work each time
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def whole_requests(port: int, request: bytes, n: int, latencies: list[float], quickack: bool = False) -> None:
    """`quickack`: re-arm TCP_QUICKACK after each send and read, as Ferryman's client does (backends/wire.py): the
    client then never waits on a server's Nagle / delayed-ACK stall."""
    import asyncio

    from backends.wire import open_connection

    reader, writer = await (open_connection if quickack else asyncio.open_connection)("127.0.0.1", port)
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(request)
        if quickack:
            writer.transport.get_protocol().quickack()
        head = await reader.readuntil(b"\r\n\r\n")
        if b"chunked" in head.lower():
            body = b"".join([c async for c in _chunks(reader)])
        else:
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - t0)
        if head[9:12] != b"200" or not CONTENT.search(body):
            raise RuntimeError(f"{port}: {head[:12]!r} {body[:300]!r}")
    writer.close()


async def _chunks(reader):
    while (size := int(await reader.readuntil(b"\r\n"), 16)):
        yield (await reader.readexactly(size + 2))[:-2]
    await reader.readexactly(2)


async def streamed_requests(port: int, request: bytes, n: int, ttfc: list[float], gaps: list[float]) -> None:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        times = []
        async for chunk in _chunks(reader):
            times += [time.perf_counter()] * len(CONTENT.findall(chunk))
        if head[9:12] != b"200" or len(times) != CHUNKS:
            raise RuntimeError(f"{port}: {head[:12]!r}, {len(times)} content chunks")
        ttfc.append(times[0] - t0)
        gaps.append((times[-1] - times[0]) / (CHUNKS - 1))
    writer.close()


async def load(port: int, key: str, scenario: str, n: int, model: str = "mock", quickack: bool = False) -> dict:
    import asyncio

    concurrency, stream = SCENARIOS[scenario]
    request = chat_request(key, stream, model)
    warm = [streamed_requests(port, request, 5, [], []) if stream else whole_requests(port, request, 5, [])
            for _ in range(concurrency)]
    await asyncio.gather(*warm)
    latencies, gaps = [], []
    t0 = time.perf_counter()
    if stream:
        await streamed_requests(port, request, n, latencies, gaps)
    else:
        await asyncio.gather(*[whole_requests(port, request, n // concurrency, latencies, quickack)
                               for _ in range(concurrency)])
    return {"latencies": latencies, "gaps": gaps, "seconds": time.perf_counter() - t0,
            "served": len(latencies) + 5 * concurrency}


TURN = 10  # requests a client sends back to back before the other client's turn


async def in_turns(clients: dict[str, tuple[int, str, str, bool]], n: int, server_pid: int) -> dict:
    """n c1 requests per client (port, key, model, quickack), taken in turns of TURN back-to-back requests, so that
    every client meets the upstream as it is at that moment (an upstream that computes, llama-cpp-python, drifts by
    several ms between phases of seconds on a shared machine). Each turn's first request is not counted: it follows
    another client's turn, not this client's own last request. Per client: its latencies, each turn's median, and the
    CPU ms per request of `server_pid`'s tree during its turns."""
    latencies, medians, cpu = ({name: [] for name in clients} for _ in range(3))
    for _ in range(-(-n // TURN)):
        for name, (port, key, model, quickack) in clients.items():
            turn, before = [], tree_cpu(server_pid)
            await whole_requests(port, chat_request(key, False, model), TURN + 1, turn, quickack)
            cpu[name].append((tree_cpu(server_pid) - before) / (TURN + 1))
            latencies[name] += turn[1:]
            medians[name].append(statistics.median(turn[1:]))
    return {name: (latencies[name], medians[name], sum(cpu[name]) / len(cpu[name]) * 1000) for name in clients}


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants: every process of a server."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree, total = {pid}, 0.0
    for _ in range(4):  # a few levels of children (a worker of a supervisor)
        tree |= {p for p, (parent, _) in stats.items() if parent in tree}
    return sum(stats[p][1] for p in tree if p in stats)


def start_server(args: list[str], port: int, pin: tuple[str, ...] = (), env: dict | None = None) -> subprocess.Popen:
    """`env`: environment variables added to this process's (a Ferryman setting: FERRYMAN_...)."""
    proc = subprocess.Popen([*pin, sys.executable, __file__, *args], cwd=ROOT, env={**os.environ, **(env or {})})
    wait_listening(proc, port)
    return proc


def wait_listening(proc: subprocess.Popen, port: int, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server on {port} exited with {proc.returncode}")
            time.sleep(0.2)
    raise RuntimeError(f"server on {port} did not start")


SCENARIOS = {"c1": (1, False), "c32": (32, False), "stream c1": (1, True)}
SERVERS = ("direct", "ferryman sqlite", "ferryman postgres", "ferryman postgres+redis", "fastapi floor", "asgi floor",
           "forwarder", "litellm")


def gateways(args: argparse.Namespace) -> None:
    import asyncio
    import contextlib
    import tempfile

    from tqdm import tqdm

    from bench.gateway_overhead import fresh_schema, free_port, ledger

    work = Path(tempfile.mkdtemp(prefix="ferryman-vs-peers-"))
    sizes = {"c1": args.requests_c1, "c32": args.requests_c32, "stream c1": args.requests_stream}
    scenarios = [s for s in SCENARIOS if s in args.scenarios]
    wanted = set(args.servers) | {"direct"}  # every "added" figure is taken against direct
    servers: dict[str, tuple[subprocess.Popen, int, str]] = {}
    with contextlib.ExitStack() as stack:
        try:
            up = free_port()
            servers["direct"] = (start_server(["--serve-mock", str(up), str(args.upstream_delay_ms)], up), up, "none")
            catalog = ferryman_catalog(work, up)
            sqlite = f"sqlite:///{work / 'ledger.db'}"
            urls = {"ferryman sqlite": sqlite} if "ferryman sqlite" in wanted else {}
            if args.postgres and "ferryman postgres" in wanted:
                urls["ferryman postgres"] = stack.enter_context(fresh_schema(args.postgres))
            if args.postgres and args.redis and "ferryman postgres+redis" in wanted:
                urls["ferryman postgres+redis"] = stack.enter_context(fresh_schema(args.postgres))
            for name, url in urls.items():
                port = free_port()
                key = ledger(url)
                redis = [args.redis] if name.endswith("+redis") else []
                servers[name] = (start_server(["--serve-ferryman", str(port), url, str(catalog), *redis], port), port,
                                 key)
            if "fastapi floor" in wanted:
                port = free_port()
                servers["fastapi floor"] = (start_server(["--serve-fastapi-floor", str(port), str(up)], port), port,
                                            "none")
            if "asgi floor" in wanted:
                port = free_port()
                servers["asgi floor"] = (start_server(["--serve-asgi-floor", str(port), str(up)], port), port, "none")
            if "forwarder" in wanted:
                port = free_port()
                servers["forwarder"] = (start_server(["--serve-forwarder", str(port), str(up)], port), port, "none")
            if not args.no_litellm and "litellm" in wanted:
                port = free_port()
                proc = litellm(work, up, port)
                wait_listening(proc, port)
                servers["litellm"] = (proc, port, LITELLM_KEY)
            results = {}
            steps = args.rounds * len(scenarios) * len(servers)
            with tqdm(total=steps, desc="gateway rounds") as progress:
                for r in range(args.rounds):
                    for scenario in scenarios:
                        for name, (proc, port, key) in servers.items():
                            before = tree_cpu(proc.pid)
                            result = asyncio.run(load(port, key, scenario, sizes[scenario]))
                            result["cpu"] = tree_cpu(proc.pid) - before
                            results[name, scenario, r] = result
                            progress.update()
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
            for proc, _, _ in servers.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
    report_gateways(args, list(servers), scenarios, results)


def report_gateways(args: argparse.Namespace, names: list[str], scenarios: list[str], results: dict) -> None:
    rounds = range(args.rounds)

    def med(name, scenario, fn):
        values = [fn(results[name, scenario, r], results["direct", scenario, r]) for r in rounds]
        return statistics.median(values), min(values), max(values)

    def p(q):
        return lambda res, _: _pct(res["latencies"], q)

    def added(q):
        return lambda res, base: _pct(res["latencies"], q) - _pct(base["latencies"], q)

    def rate(res, _):
        return len(res["latencies"]) / res["seconds"]

    def cpu_ms(res, _):
        return res["cpu"] / res["served"] * 1000

    rows, stream_rows = [], []
    for scenario in [s for s in ("c1", "c32") if s in scenarios]:
        for name in names:
            rows.append([name, scenario, *[_mm(med(name, scenario, p(q))) for q in (50, 95, 99)],
                         "-" if name == "direct" else _mm(med(name, scenario, added(50))),
                         _mm(med(name, scenario, rate), 0), _mm(med(name, scenario, cpu_ms)),
                         f"{1000 / med(name, scenario, cpu_ms)[0]:,.0f}"])
    for name in names if "stream c1" in scenarios else ():
        ttfc = med(name, "stream c1", p(50))
        stream_rows.append([name, _mm(ttfc), "-" if name == "direct" else _mm(med(name, "stream c1", added(50))),
                            _mm(med(name, "stream c1", lambda res, _: statistics.median(res["gaps"]) * 1000), 3),
                            _mm(med(name, "stream c1", cpu_ms))])
    headers = ["server", "load", "p50 ms", "p95 ms", "p99 ms", "added p50 ms", "req/s", "server CPU ms/req",
               "req/s per core"]
    main_table = table(headers, rows)
    stream_table = table(["server", "TTFC p50 ms", "added TTFC p50 ms", "content-chunk gap p50 ms",
                          "server CPU ms/req"], stream_rows)
    ratio_rows = ratios(names, scenarios, results, rounds)
    ratio_table = table(["ratio (within each round)", "median (min-max)", "target"], ratio_rows)
    print(main_table, stream_table, ratio_table, sep="\n\n")
    if set(names) != set(SERVERS) - ({"litellm"} if args.no_litellm else set()) - \
            ({"ferryman postgres"} if not args.postgres else set()) - \
            ({"ferryman postgres+redis"} if not (args.postgres and args.redis) else set()) or \
            scenarios != list(SCENARIOS) or args.upstream_delay_ms:
        print("(a filtered run: docs/BENCHMARKS.md left as it is)")
        return
    body = f"""
Non-streaming `/v1/chat/completions` ({args.requests_c1} requests at concurrency 1, {args.requests_c32} at 32) and
streaming at concurrency 1 ({args.requests_stream} requests; the mock streams a role chunk, {CHUNKS} content chunks,
a finish chunk, a usage-only chunk and `[DONE]`), through each server to the same mock upstream (raw asyncio,
answers at once). Ferryman: one uvicorn process, a catalog with one `kind: openai` model, one tenant with a
budget, a key and rate limits (every admission check runs), the SQLite ledger (WAL), a PostgreSQL schema of
its own, or that schema with Redis (rate limits and budget holds in Redis, usage records written to PostgreSQL in
batches by a writer thread in the same process, whose CPU counts). LiteLLM {LITELLM_VERSION} proxy: one worker, a master key, no database (so it records no spend: less
work than Ferryman). FastAPI floor: a FastAPI app that parses the body into Ferryman's own request model and
forwards it with Ferryman's upstream client (backends/wire.py), nothing else: what any FastAPI gateway costs
before doing a gateway's work. ASGI floor: a bare ASGI app on the same server relaying the body unread over the
same upstream client: what Python's ASGI stack costs before any framework. Forwarder: ~40 lines of asyncio relaying bytes over a kept-alive upstream connection.
Each cell: median of {args.rounds} interleaved rounds, min-max in brackets; "added" = that server's percentile
minus direct's in the same round. Server CPU = user + system time of every process of the server during the
scenario (warm-up included), per request; req/s per core = 1000 / that. TTFC = time to first content chunk.
The machine is shared (2 cores, load average {_loadavg()} at the end): wall-clock req/s and latencies
suffer from other work; the CPU-per-request figures and the within-round ratios much less so. The >= 0.8
target is the scaled-out configuration's (PostgreSQL + Redis); PostgreSQL alone pays two transactions per
request, each in a worker thread.

{main_table}

{stream_table}

{ratio_table}
"""
    command = "bench/vs_peers.py" + (f" --postgres {args.postgres}" if args.postgres else "") + \
        (f" --redis {args.redis}" if args.postgres and args.redis else "") + \
        f" --rounds {args.rounds} --requests-c1 {args.requests_c1} --requests-c32 {args.requests_c32}" \
        f" --requests-stream {args.requests_stream}"
    write_section("vs_peers", "Gateway side by side: Ferryman, LiteLLM, a minimal forwarder, direct", command, body)


def ratios(names: list[str], scenarios: list[str], results: dict, rounds) -> list[list]:
    def per_round(fn):
        values = [fn(r) for r in rounds]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    def added(name, scenario, r):
        return _pct(results[name, scenario, r]["latencies"], 50) - _pct(results["direct", scenario, r]["latencies"], 50)

    def per_core(name, scenario, r):
        res = results[name, scenario, r]
        return res["served"] / res["cpu"]

    rows = []
    for name, label in (("ferryman postgres", "PostgreSQL"), ("ferryman postgres+redis", "PostgreSQL + Redis")):
        if {name, "ferryman sqlite"} <= set(names) and "c32" in scenarios:
            rows.append([f"Ferryman {label} / SQLite req/s, c32", per_round(
                lambda r: len(results[name, "c32", r]["latencies"]) / results[name, "c32", r]["seconds"]
                / (len(results["ferryman sqlite", "c32", r]["latencies"]) / results["ferryman sqlite", "c32", r]["seconds"])),
                ">= 0.8" if name.endswith("+redis") else ""])
    if not {"ferryman sqlite", "forwarder"} <= set(names):
        return rows
    if "c1" in scenarios:
        rows.append(["Ferryman SQLite added p50 / forwarder added p50, c1",
                     per_round(lambda r: added("ferryman sqlite", "c1", r) / added("forwarder", "c1", r)), "<= 2"])
    if "c1" in scenarios and "fastapi floor" in names:
        rows.append(["Ferryman SQLite added p50 - FastAPI floor added p50, c1, ms (Ferryman's own work)",
                     per_round(lambda r: added("ferryman sqlite", "c1", r) - added("fastapi floor", "c1", r)), ""])
        rows.append(["FastAPI floor added p50 / forwarder added p50, c1",
                     per_round(lambda r: added("fastapi floor", "c1", r) / added("forwarder", "c1", r)), ""])
    if "c1" in scenarios and "asgi floor" in names:
        rows.append(["ASGI floor added p50 / forwarder added p50, c1",
                     per_round(lambda r: added("asgi floor", "c1", r) / added("forwarder", "c1", r)), ""])
    if "stream c1" in scenarios:
        rows.append(["Ferryman SQLite TTFC added - forwarder TTFC added, ms",
                     per_round(lambda r: added("ferryman sqlite", "stream c1", r) - added("forwarder", "stream c1", r)),
                     "<= 1"])
    if "litellm" in names:
        for scenario in [s for s in ("c1", "c32") if s in scenarios]:
            rows.append([f"Ferryman SQLite / LiteLLM req/s per core, {scenario}",
                         per_round(lambda r: per_core("ferryman sqlite", scenario, r) / per_core("litellm", scenario, r)),
                         ">= 4"])
    return rows


# --- the upstream matrix: Ferryman in front of upstreams of every socket habit ----------------------------

# style -> (how the upstream is started, its well-behaved copy, whether a plain keep-alive client can use it as is)
UPSTREAMS = {
    "asyncio (TCP_NODELAY, one send)": ("mock", "mock", True),
    "http.server, Content-Length, no TCP_NODELAY": ("nagle", "nodelay", True),
    "http.server, chunked, no TCP_NODELAY": ("nagle-chunked", "nodelay-chunked", True),
    "http.server, HTTP/1.0, closes": ("http10", "nodelay", False),
    "http.server, closes idle connections": ("idle-close", "nodelay", False),
    "LiteLLM proxy (uvicorn)": ("litellm", "litellm", True),
    "llama-cpp-python server (uvicorn)": ("llamacpp", "llamacpp", True),
    "asyncio, answers after 8 ms idle (LiteLLM's latency, not its CPU)": ("mock-8ms", "mock-8ms", True),
}
LLAMACPP_VERSION = "0.3.36"  # what bench/llamacpp_setup.sh builds by default


# LiteLLM's proxy keeps working between requests (its background tasks) and, on the one core every upstream shares
# (--upstream-cpu), slowed llama-cpp-python's row by tens of ms, through Ferryman more than direct (12-06 05:45-06:09).
HEAVY = ("litellm", "llamacpp")
PROBE_WAIT_S = 3.0  # Ferryman probes each upstream every 2 s (catalog health_interval_s)


def pause_others(heavy: dict, kind: str) -> bool:
    """SIGSTOP every heavy upstream but `kind`'s, SIGCONT that one; whether it was paused before."""
    resumed = False
    for name, proc in heavy.items():
        if name == kind:
            resumed = getattr(proc, "paused", False)
        signal_tree(proc.pid, signal.SIGSTOP if name != kind else signal.SIGCONT)
        proc.paused = name != kind
    return resumed


def signal_tree(pid: int, sig: int) -> None:
    """Signal a process and its descendants (a proxy's workers)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree = {pid}
    for _ in range(4):
        tree |= {p for p, parent in parents.items() if parent in tree}
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def start_upstream(kind: str, work: Path, mock_port: int, llamacpp_dir: Path | None = None,
                   cpu: int | None = None) -> tuple[subprocess.Popen, int]:
    """`cpu`: the upstream runs on that core alone (taskset), as it would on a machine of its own."""
    from bench.gateway_overhead import free_port

    port, pin = free_port(), () if cpu is None else ("taskset", "-c", str(cpu))
    if kind in ("mock", "mock-8ms"):
        return start_server(["--serve-mock", str(port), "8" if kind == "mock-8ms" else "0"], port, pin), port
    if kind == "litellm":
        proc = litellm(work, mock_port, port, pin)
        wait_listening(proc, port)
        return proc, port
    if kind == "llamacpp":
        proc = llamacpp(llamacpp_dir, work, port, pin=pin)
        wait_listening(proc, port)
        return proc, port
    return start_server(["--serve-threaded", str(port), kind], port, pin), port


def upstreams(args: argparse.Namespace) -> None:
    """Rounds of: per style, a direct keep-alive client to the well-behaved copy, the same client to the style as
    is (where it can keep alive), and Ferryman in front of the style; c1, non-streaming."""
    import asyncio
    import tempfile

    from bench.gateway_overhead import free_port, ledger

    work, n = Path(tempfile.mkdtemp(prefix="ferryman-upstreams-")), args.requests_c1
    styles = {s: k for s, k in UPSTREAMS.items() if not (args.no_litellm and k[0] == "litellm")
              and not (args.llamacpp is None and k[0] == "llamacpp")
              and (not args.only_upstreams or k[0] in args.only_upstreams)}
    procs, ports = [], {}
    try:
        mock = start_upstream("mock", work, 0, cpu=args.upstream_cpu)
        procs.append(mock[0])
        ports["mock"] = mock[1]
        heavy = {}  # upstreams that work on their own between requests: paused while another row is measured
        for kind in {k for style in styles.values() for k in style[:2]} - {"mock"}:
            proc, ports[kind] = start_upstream(kind, work, ports["mock"], args.llamacpp, args.upstream_cpu)
            procs.append(proc)
            if kind in HEAVY:
                heavy[kind] = proc
        os.environ["BENCH_LITELLM_KEY"] = LITELLM_KEY
        catalog = work / "catalog.yaml"
        catalog.write_text("models:\n" + "".join(
            f"  - {{name: u{i}, kind: openai, base_url: 'http://127.0.0.1:{ports[kind]}/v1', upstream_model: mock,"
            f" price: {{input: 0.5, output: 1.5}}{', api_key_env: BENCH_LITELLM_KEY' if kind == 'litellm' else ''}}}\n"
            for i, (kind, _, _) in enumerate(styles.values())))
        url, port = f"sqlite:///{work / 'ledger.db'}", free_port()
        key = ledger(url)
        ferryman, busy_port = start_server(["--serve-ferryman", str(port), url, str(catalog)], port), free_port()
        procs += [ferryman, start_server(["--serve-ferryman", str(busy_port), url, str(catalog)], busy_port,
                                         env={"FERRYMAN_BUSY_POLL": "true"})]
        forwarders = {}  # the floor of any proxy: bench's minimal byte relay in front of each well-behaved copy
        for style, (_, copy, _) in styles.items():
            forwarders[style] = free_port()
            procs.append(start_server(["--serve-forwarder", str(forwarders[style]), str(ports[copy])], forwarders[style]))
        for i in range(len(styles)):  # a fresh process's first requests (imports, caches) are not what c1 p50 means
            asyncio.run(load(port, key, "c1", 50, f"u{i}"))
            asyncio.run(load(busy_port, key, "c1", 50, f"u{i}"))
        results: dict = {}
        for r in range(args.rounds):
            for i, (style, (kind, copy, plain)) in enumerate(styles.items()):
                if pause_others(heavy, kind):
                    time.sleep(PROBE_WAIT_S)  # a resumed upstream's next health probe gets through (marked up)
                direct_key = LITELLM_KEY if copy == "litellm" else "none"
                turns = asyncio.run(in_turns({
                    "direct to the well-behaved copy": (ports[copy], direct_key, "mock", True),  # immune, as Ferryman's client is
                    "Ferryman": (port, key, f"u{i}", False),
                    "Ferryman, busy polling": (busy_port, key, f"u{i}", False),
                    "minimal forwarder": (forwarders[style], direct_key, "mock", False)}, n, ferryman.pid))
                for name, (latencies, _, _) in turns.items():
                    results[style, name, r] = _pct(latencies, 50)
                results[style, "cpu", r] = turns["Ferryman"][2]  # its own CPU per request: the p50 on a core of its own
                results[style, "turns", r] = 1000 * statistics.median(  # Ferryman's turn minus the baseline's turn before it
                    f - d for f, d in zip(turns["Ferryman"][1], turns["direct to the well-behaved copy"][1]))
                if plain:
                    size = n if kind == copy else max(20, n // 8)
                    results[style, "direct to it as is", r] = _pct(asyncio.run(
                        load(ports[kind], direct_key, "c1", size))["latencies"], 50)
                print(f"round {r + 1}: {style}: " + ", ".join(
                    f"{name} {results[style, name, r]:.2f} ms" for name in (*turns, "direct to it as is")
                    if (style, name, r) in results), flush=True)
    finally:
        for proc in procs:
            signal_tree(proc.pid, signal.SIGCONT)
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
    report_upstreams(args, styles, results)


def report_upstreams(args: argparse.Namespace, styles: dict, results: dict) -> None:
    rounds = range(args.rounds)

    def stat(style, name, fn=lambda style, name, r: results[style, name, r]):
        values = [fn(style, name, r) for r in rounds]
        return statistics.median(values), min(values), max(values)

    def added(style, name, r):
        return results[style, name, r] - results[style, "direct to the well-behaved copy", r]

    rows = []
    for style, (_, _, plain) in styles.items():
        ferryman, busy = stat(style, "Ferryman", added), stat(style, "Ferryman, busy polling", added)
        rows.append([style, _mm(stat(style, "direct to the well-behaved copy")),
                     _mm(stat(style, "direct to it as is")) if plain else "- (cannot keep alive)",
                     _mm(stat(style, "Ferryman")), _mm(ferryman), _mm(stat(style, "turns")), _mm(stat(style, "cpu")),
                     _mm(busy), _mm(stat(style, "minimal forwarder", added)),
                     " / ".join("yes" if x[0] <= 2 else "NO" for x in (ferryman, busy))])
    if args.llamacpp is None:
        rows.append(["llama-cpp-python server (uvicorn)", "not measured: no build (`bench/llamacpp_setup.sh DIR`, "
                     "then `--llamacpp DIR`)", "-", "-", "-", "-", "-", "-", "-", "-"])
    result = table(["upstream", "direct to a well-behaved copy p50 ms", "plain keep-alive client to it p50 ms",
                    "Ferryman p50 ms", "Ferryman added p50 ms", "Ferryman added, median of turn pairs ms",
                    "Ferryman CPU ms per request", "Ferryman, busy polling: added p50 ms",
                    "minimal forwarder: added p50 ms", "within 2 ms (default / busy polling)"], rows)
    print(result)
    if args.no_litellm or args.only_upstreams:
        print("(a filtered run: docs/BENCHMARKS.md left as it is)")
        return
    pinned = args.upstream_cpu is not None
    placement = (f"Every upstream process ran on core {args.upstream_cpu} alone (taskset), as on a machine of its own; "
                 "Ferryman and the client were left to the scheduler." if pinned else
                 "Every process was left to the scheduler: a CPU-heavy upstream's work after its answer (LiteLLM's "
                 "callbacks) competes with Ferryman and the client for the 2 cores.")
    body = f"""
Ferryman (one uvicorn process, SQLite ledger, a catalog with one `kind: openai` model per upstream, one tenant
with a budget, a key and rate limits) in front of OpenAI-compatible upstreams of different socket habits, each its
own process: the asyncio mock (TCP_NODELAY, head and body in one send); Python's `http.server` (a thread per
connection, head and body in separate sends, no TCP_NODELAY: the Nagle / delayed-ACK stall) with a
`Content-Length` body, with a chunked body, answering HTTP/1.0 and closing, and closing every connection once
idle without saying so; LiteLLM {LITELLM_VERSION}'s proxy (in front of the asyncio mock); llama-cpp-python
{LLAMACPP_VERSION}'s server (uvicorn; llama.cpp built from PyPI's sdist into DIR by `bench/llamacpp_setup.sh DIR`, -DGGML_NATIVE=ON)
generating from an f32 GGUF of models/large (llama.cpp's convert_hf_to_gguf.py), one thread, greedy, 16 tokens
(every request the same work). Non-streaming chat at
concurrency 1, {args.requests_c1} requests per cell (the plain client to a stalling upstream: {max(20, args.requests_c1 // 8)}).
The baseline client and Ferryman's clients take turns of {TURN} back-to-back requests (each turn's first request,
which follows another client's turn, is not counted), so all meet the upstream as it is at that moment: an
upstream that computes (llama-cpp-python) drifted by several ms between phases of seconds on this shared machine.
"Median of turn pairs" is the median over turns of Ferryman's turn median minus the baseline's turn before it. A
second Ferryman, the same but with FERRYMAN_BUSY_POLL=true (gateway/drain.py: while a request is in flight its event
loop polls instead of sleeping, a core's worth of CPU meanwhile), takes a third turn: its column and the second
verdict say what keeping the CPU awake through the upstream's wait buys on this machine (bench/idle_penalty.py).
A fourth client takes turns through bench's minimal forwarder (bytes relayed over one kept-alive upstream
connection, no parsing, no ledger) in front of the well-behaved copy: the floor any Python proxy pays on this
machine. LiteLLM's proxy and llama-cpp-python's server are paused (SIGSTOP) while other rows are measured and resumed
{PROBE_WAIT_S:.0f} s before their own (Ferryman's next health probe marks them up): on the one core the upstreams
share, LiteLLM's work between requests had slowed llama-cpp-python's row, through Ferryman more than direct.
The baseline is a direct keep-alive client (raw asyncio, one send per request, TCP_QUICKACK re-armed as Ferryman's
client does it) to a well-behaved copy of the same upstream: the same server with TCP_NODELAY, keeping connections
alive (LiteLLM and llama-cpp-python have no such copy: the baseline is the server itself, read by that
stall-immune client). "Plain keep-alive
client to it" is that client without TCP_QUICKACK against the upstream as it is: the stall Ferryman's client
avoids (backends/wire.py re-arms TCP_QUICKACK after each read and after each send, so the head's ACK goes at once). Each cell: median of
{args.rounds} interleaved rounds (min-max); "added" = Ferryman minus the baseline in the same round; before the rounds
each model gets 50 unmeasured requests (a fresh process's first ones pay imports and cold caches). "Ferryman CPU
ms per request" is the CPU time (user + system) its process spent per request in that cell: on a quiet core the
added latency could not be much below it, and where the added p50 is far above it the request waited for a core.
The row "asyncio, answers after 8 ms idle" is a control for the upstreams that take milliseconds (LiteLLM,
llama-cpp-python): the asyncio mock answering after 8 ms, about LiteLLM's own p50 here, with none of its CPU or
socket habits. Where the rows agree, what Ferryman adds in front of LiteLLM is what an upstream of that latency costs it
(its CPU per request is higher in both: its work, done after a wait), not LiteLLM's doing.
The machine has 2 cores, shared with whatever else
runs on it (load average {_loadavg()} at the end: above ~2, read the ratios, not the milliseconds).
{placement}

{result}
"""
    command = f"bench/vs_peers.py --upstreams --rounds {args.rounds} --requests-c1 {args.requests_c1}" + (
        " --llamacpp DIR" if args.llamacpp else "") + (f" --upstream-cpu {args.upstream_cpu}" if pinned else "")
    write_section("vs_peers_upstreams", "Ferryman in front of upstreams of every socket habit", command, body)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


def _mm(stat: tuple[float, float, float], digits: int = 2) -> str:
    mid, lo, hi = stat
    return f"{mid:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


# --- the orchestrator -------------------------------------------------------------------------------------

def workload() -> list[list[int]]:
    """64 prompts cut from held-out text, lengths cycling 8..120 tokens, each starting with <|bos|>."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    text = (ROOT / "models" / "heldout.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prompts, at = [], 0
    for i in range(PROMPTS):
        length = 8 + (i * 37) % 113
        prompts.append([tok.bos_token_id] + ids[at:at + length - 1])
        at += length
    return prompts


def bench_python(name: str, with_ours: bool = True) -> Path:
    """A virtual environment of the bench's own for a peer's packages; with_ours: the project's venv visible beneath."""
    venv = BENCH_VENV / name
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        if not with_ours:
            return python
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        ours_site = [p for p in sys.path if p.endswith("site-packages")][0]
        (Path(site) / "ferryman-venv.pth").write_text(ours_site + "\n")  # torch, transformers for the converter
    return python


def ct2_model(python: Path) -> Path:
    out = BENCH_VENV / "ct2-large"
    pip = [str(python), "-m", "pip", "install", "-q", f"ctranslate2=={CT2_VERSION}"]
    if subprocess.run([str(python), "-c", "import ctranslate2"], capture_output=True).returncode:
        print(f"installing ctranslate2=={CT2_VERSION} into {python.parent.parent}", flush=True)
        subprocess.run(pip, check=True)
    if not (out / "model.bin").exists():
        subprocess.run([str(python), "-m", "ctranslate2.converters.transformers", "--model", str(MODEL),
                        "--output_dir", str(out), "--force"], check=True)
    return out


class Worker:
    def __init__(self, name: str, python: Path, prompts_file: Path, ct2_dir: Path):
        args = [str(python), __file__, "--engine-worker", name, str(prompts_file), str(ct2_dir)]
        self.name = name
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        if self._line() != "ready":
            raise RuntimeError(f"{name} worker did not start")

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited ({self.proc.wait()})")
        return line.strip()

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def engines(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    prompts = workload()
    prompts_file = BENCH_VENV / "prompts.json"
    BENCH_VENV.mkdir(exist_ok=True)
    prompts_file.write_text(json.dumps(prompts))
    ct2_python = bench_python("ct2")
    ct2_dir = ct2_model(ct2_python)
    workers = [Worker(n, ct2_python if n.startswith("ct2") else Path(sys.executable), prompts_file, ct2_dir)
               for n in tqdm(args.engine_names, desc="loading engines")]
    speed, tokens = {w.name: [] for w in workers}, {}
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for w in workers:
            result = w.run()
            speed[w.name].append(PROMPTS * NEW_TOKENS / result["seconds"])
            tokens[w.name] = result["tokens"]
    for w in workers:
        w.close()
    report_engines(args, speed, tokens)


def report_engines(args: argparse.Namespace, speed: dict, tokens: dict) -> None:
    base = statistics.median(speed["ours-fp32"])
    reference = tokens.get("hf-generate")
    rows = []
    for name, runs in speed.items():
        same = sum(a == b for a, b in zip(tokens[name], reference)) if reference else "-"
        rows.append([name, statistics.median(runs), f"{min(runs):,.0f}-{max(runs):,.0f}",
                     statistics.median(runs) / base, f"{same}/{PROMPTS}"])
    ratios = [["ours-int8 / ours-fp32", _ratio(speed, "ours-int8", "ours-fp32")],
              ["ours-int8 / ct2-int8", _ratio(speed, "ours-int8", "ct2-int8")],
              ["ours-fp32 / ct2-float32", _ratio(speed, "ours-fp32", "ct2-float32")],
              ["ours-fp32 / hf-generate", _ratio(speed, "ours-fp32", "hf-generate")]]
    result = table(["engine", "tokens/s (median)", "min-max", "vs ours-fp32", "requests = HF generate's tokens"], rows)
    ratio_table = table(["ratio per round", "median (min-max)"], [r for r in ratios if r[1]])
    print(result, ratio_table, sep="\n\n")
    body = f"""
`models/large`, {PROMPTS} prompts cut from held-out text (8 to 120 tokens, mixed), {NEW_TOKENS} new tokens each,
greedy, EOS ignored, all {PROMPTS} submitted together; one thread per engine, each engine its own process.
Tokens/s = {PROMPTS * NEW_TOKENS} generated tokens / wall time of the whole workload (prefill included); median
and min-max of {args.rounds} interleaved rounds (each round runs every engine once). Ratios are taken within
each round. Our int8 runs fbgemm's int8 GEMM (activations quantized symmetric per row; 8-bit on AVX-512 VNNI, else 7-bit); CTranslate2
{CT2_VERSION} (installed by the bench into `.bench-venv/ct2`, model converted by its converter) runs its own
int8 GEMM. Last column: requests whose {NEW_TOKENS} tokens equal HF generate's fp32 tokens exactly.
Load average at the end: {_loadavg()}.

{result}

{ratio_table}
"""
    write_section("vs_peers_engines", "Engine side by side: our engine, CTranslate2, HF generate",
                  f"bench/vs_peers.py --engines --rounds {args.rounds}", body)


def _ratio(speed: dict, a: str, b: str) -> str:
    if a not in speed or b not in speed:
        return ""
    per_round = [x / y for x, y in zip(speed[a], speed[b])]
    return f"{statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})"


def _loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-worker":
        return engine_worker(*sys.argv[2:5])
    servers = {"--serve-mock": serve_mock, "--serve-threaded": serve_threaded, "--serve-forwarder": serve_forwarder, "--serve-ferryman": serve_ferryman,
               "--serve-fastapi-floor": serve_fastapi_floor, "--serve-asgi-floor": serve_asgi_floor}
    if len(sys.argv) > 1 and sys.argv[1] in servers:
        return servers[sys.argv[1]](*[int(a) if a.isdigit() else a for a in sys.argv[2:]])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", action="store_true", help="the engine comparison instead of the gateway one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", dest="engine_names", nargs="+", choices=ENGINES, default=list(ENGINES),
                        help="engines to compare (--engines)")
    parser.add_argument("--postgres", help="also Ferryman on a PostgreSQL ledger: a database URL (the bench makes and "
                        "drops a schema of its own there)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the incumbent (no PyPI access)")
    parser.add_argument("--redis", help="with --postgres, also Ferryman on PostgreSQL + Redis (rate limits and budget "
                        "holds in Redis, records written in batches): a Redis URL")
    parser.add_argument("--servers", nargs="+", choices=SERVERS[1:], default=list(SERVERS[1:]),
                        help="gateways to run (direct always runs); a filtered run prints and leaves the docs alone")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS),
                        help="loads to run; a filtered run prints and leaves the docs alone")
    parser.add_argument("--upstream-delay-ms", type=int, default=0, help="the mock answers after this long idle "
                        "(a real upstream's latency); a run with a delay prints and leaves the docs alone")
    parser.add_argument("--requests-c1", type=int, default=400)
    parser.add_argument("--requests-c32", type=int, default=1600)
    parser.add_argument("--requests-stream", type=int, default=200)
    parser.add_argument("--upstreams", action="store_true", help="Ferryman in front of upstreams of every socket "
                        "habit, against a direct client to a well-behaved copy of each")
    parser.add_argument("--llamacpp", type=Path, metavar="DIR", help="with --upstreams: also llama-cpp-python's "
                        "server, from the directory bench/llamacpp_setup.sh DIR built")
    parser.add_argument("--only-upstreams", nargs="+", choices=sorted({k[0] for k in UPSTREAMS.values()}),
                        help="with --upstreams: only these styles; a filtered run prints and leaves the docs alone")
    parser.add_argument("--upstream-cpu", type=int, metavar="N", help="with --upstreams: every upstream on core N "
                        "alone (taskset), as on a machine of its own: a CPU-heavy upstream's work after its answer "
                        "(LiteLLM's callbacks, llama.cpp's threads) then does not take the gateway's or the client's core")
    args = parser.parse_args()
    engines(args) if args.engines else upstreams(args) if args.upstreams else gateways(args)


if __name__ == "__main__":
    main()
