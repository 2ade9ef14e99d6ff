"""backends/wire.py against raw asyncio servers: keep-alive reuse, a pooled connection the server dropped while
idle, chunked bodies split anywhere, bodies without a length, timeouts and refused connections; and what
OpenAIUpstream makes of malformed answers (the upstream's fault: BackendUnavailable, never the caller's)."""
from __future__ import annotations

import asyncio
import json
import statistics
import time

import pytest

from backends.openai_upstream import _lines
from backends.wire import Pool, WireError
from tests.harness import free_port
from tests.upstream_styles import STYLES, upstream


async def serve(answer: bytes, *, close_after: bool = False, silent: bool = False):
    """A server that answers every request with `answer` (or never, when silent); returns (server, accepted)."""
    accepted = []

    async def client(reader, writer):
        accepted.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if silent:
                    await asyncio.sleep(10)
                writer.write(answer)
                await writer.drain()
                if close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    return server, accepted


async def spare_opened(p: Pool) -> None:
    """Until the connection the pool opens ahead (for a server that closes each one) is open, 2 s at most."""
    for _ in range(200):
        await asyncio.sleep(0.01)
        if p.spare is None and p.idle:
            return


def pool(server, timeout_s: float = 5.0) -> Pool:
    port = server.sockets[0].getsockname()[1]
    return Pool(f"http://127.0.0.1:{port}/v1", {"authorization": "Bearer k"}, timeout_s=timeout_s,
                connect_timeout_s=1.0, max_connections=4)


WHOLE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"


def test_keep_alive_reuses_one_connection():
    async def main():
        server, accepted = await serve(WHOLE)
        p = pool(server)
        for _ in range(20):
            answer, body = await p.post("/chat/completions", b"{}")
            assert (answer.status, body) == (200, b"hello")
        p.close()
        server.close()
        return len(accepted)

    assert asyncio.run(main()) == 1


def test_connection_the_server_dropped_while_idle_is_replaced():
    async def main():
        server, accepted = await serve(WHOLE, close_after=True)
        p = pool(server)
        bodies = []
        for _ in range(3):
            bodies.append((await p.post("/chat/completions", b"{}"))[1])
            await asyncio.sleep(0.05)  # the close reaches the pooled connection, or not yet: both must work
        await spare_opened(p)
        p.close()
        server.close()
        return bodies, len(accepted)

    bodies, connections = asyncio.run(main())
    assert bodies == [b"hello"] * 3
    assert connections == 4  # three answered; the fourth opened ahead once the server closed the third


@pytest.mark.parametrize("says_so", [True, False])
def test_an_upstream_that_closes_every_connection_has_the_next_one_opened_ahead(says_so):
    """A server that closes each connection after one answer (with Connection: close, or silently) would make
    every request connect first. The pool opens the next request's connection while the answer goes back to the
    client (issue 27, point 1): only the first request connects on its way."""
    answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello" if says_so else WHOLE

    async def main():
        server, accepted = await serve(answer, close_after=True)
        p = pool(server)
        on_path, connect = [], p._connect

        async def watched():
            on_path.append(asyncio.current_task() is not p.spare)
            return await connect()

        p._connect = watched
        for _ in range(5):
            assert (await p.post("/chat/completions", b"{}"))[1] == b"hello"
            await spare_opened(p)  # the client's turn: the close arrives, the next connection opens
        p.close()
        server.close()
        return on_path, len(accepted)

    on_path, connections = asyncio.run(main())
    assert on_path == [True, False, False, False, False, False], on_path
    assert connections == 6  # five answered, one opened for a sixth


def test_a_pooled_connection_the_server_reset_is_passed_over():
    """A server killed while a connection sits pooled resets it (no orderly close: the pool hears of no end of
    the answer stream, the transport is just gone). The next request passes over it and reports the refused
    connection as the upstream's failure, not a crash of ours (CI saw AttributeError here once)."""
    import socket
    import struct

    async def main():
        server, accepted = await serve(WHOLE)
        p = pool(server)
        assert (await p.post("/chat/completions", b"{}"))[1] == b"hello"
        server.close()
        for writer in accepted:  # SO_LINGER 0: close() sends a reset
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        await asyncio.sleep(0.1)
        try:
            with pytest.raises(WireError):
                await p.post("/chat/completions", b"{}")
        finally:
            p.close()

    asyncio.run(main())


def test_chunked_sse_split_anywhere_and_a_body_without_length():
    events = b"data: {\"a\": 1}\r\n\r\ndata: {\"b\": 2}\n\ndata: [DONE]\n\n"
    pieces = [events[:7], events[7:30], events[30:]]  # an event cut in two, and a chunk with several events
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"

    async def main():
        server, accepted = await serve(chunked)
        p = pool(server)
        for _ in range(2):
            async with p.stream("/chat/completions", b"{}") as (answer, chunks):
                lines = [line async for line in _lines(chunks)]
        assert answer.status == 200
        assert len(accepted) == 1  # read to its end: back to the pool, reused
        assert [line for line in lines if line] == [b'data: {"a": 1}', b'data: {"b": 2}', b"data: [DONE]"]
        p.close()
        server.close()
        server, accepted = await serve(b"HTTP/1.1 200 OK\r\n\r\nto the end", close_after=True)
        p = pool(server)
        assert (await p.post("/x", b"{}"))[1] == b"to the end"
        assert not p.idle  # no length: the connection ended with the body
        server.close()
        server, _ = await serve(b"HTTP/1.1 204 No Content\r\n\r\n")
        p = pool(server, timeout_s=1.0)
        assert (await p.post("/x", b"{}"))[1] == b""
        assert len(p.idle) == 1  # no body to wait for
        p.close()
        server.close()

    asyncio.run(main())


def test_timeout_and_refused_connection_are_wire_errors():
    async def main():
        server, _ = await serve(WHOLE, silent=True)
        p = pool(server, timeout_s=0.2)
        with pytest.raises(WireError, match="ReadTimeout"):
            await p.post("/chat/completions", b"{}")
        assert not p.idle
        server.close()
        port = free_port()
        refused = Pool(f"http://127.0.0.1:{port}", {}, timeout_s=1, connect_timeout_s=1, max_connections=1)
        with pytest.raises(WireError, match="ConnectError"):
            await refused.post("/chat/completions", b"{}")

    asyncio.run(main())


def _http(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body


def _ask(answer: bytes, stream: bool) -> list:
    """The deltas OpenAIUpstream makes of one canned upstream answer."""
    from backends.base import GenerationRequest, SamplingParams
    from backends.openai_upstream import OpenAIUpstream

    async def main():
        server, _ = await serve(answer)
        port = server.sockets[0].getsockname()[1]
        upstream = OpenAIUpstream("m", f"http://127.0.0.1:{port}/v1")
        request = GenerationRequest("r", [], SamplingParams(max_tokens=8), messages=[{"role": "user", "content": "hi"}],
                                    stream=stream)
        try:
            return [d async for d in upstream.generate(request)]
        finally:
            await upstream.stop()
            server.close()

    return asyncio.run(main())


@pytest.mark.parametrize("body", [b"<html>502 from a proxy</html>", b'{"object": "chat.completion"}',
                                  b'{"choices": []}', b'{"choices": [null]}', b"[1, 2]"])
def test_a_malformed_whole_answer_is_the_upstreams_fault(body):
    from backends.base import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="not an OpenAI chat completion"):
        _ask(_http(body), stream=False)


@pytest.mark.parametrize("events", [b"data: {not json\n\n", b'data: {"choices": "abc"}\n\n',
                                    b'data: {"choices": [{"delta": 7}]}\n\n'])
def test_a_malformed_stream_is_the_upstreams_fault(events):
    from backends.base import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="not an OpenAI chat completion"):
        _ask(_http(events + b"data: [DONE]\n\n", b"text/event-stream"), stream=True)


@pytest.mark.parametrize("usage", [{"prompt_tokens": -5, "completion_tokens": 3}, {"prompt_tokens": "7"},
                                   {"prompt_tokens": 2, "completion_tokens": 1,
                                    "prompt_tokens_details": {"cached_tokens": 9}}, [1]])
def test_implausible_reported_usage_is_no_usage(usage):
    """Never billed as reported: the gateway counts instead, by its one rule (tests/gateway/test_upstream_interop.py)."""
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "four byte"}, "finish_reason": "stop"}],
                       "usage": usage}).encode()
    [delta] = _ask(_http(body), stream=False)
    assert delta.text == "four byte"
    assert delta.usage is None


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_every_upstream_socket_habit_answers_without_the_delayed_ack_stall(style):
    """http.server without TCP_NODELAY sends the body only once the head is ACKed; a kernel that delays that ACK
    (40 ms at least on Linux) would make 25 requests take a second or more. Ours acknowledges at once."""
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}

    async def main(url):
        p = Pool(url, {}, timeout_s=5.0, connect_timeout_s=1.0, max_connections=4)
        bodies, took = [], []
        for _ in range(25):
            start = time.perf_counter()
            bodies.append(json.loads((await p.post("/chat/completions", b"{}"))[1]))
            took.append(time.perf_counter() - start)
        await spare_opened(p)
        pooled = [not (conn[0].at_eof() or conn[1].is_closing()) for conn in p.idle]
        p.close()
        return bodies, took, pooled

    with upstream(style, lambda body: answer) as url:
        bodies, took, pooled = asyncio.run(main(url))
    assert bodies == [answer] * 25
    assert statistics.median(took) < 0.040, took  # the median: a loaded machine's pauses hit a few, Nagle every one
    assert pooled == [True]  # kept alive; where the server closes each one (http10, idle-close): the next, opened
