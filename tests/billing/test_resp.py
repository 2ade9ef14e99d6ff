"""billing/resp.py, the request path's pipelined Redis client: against the real Redis, and against fake servers
that fall silent or hang up."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from billing import resp
from tests.harness import free_port


def run(coro):
    return asyncio.run(coro)


async def fake_server(on_connection) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    return server, f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"


def test_replies_reach_their_own_commands_with_hundreds_in_flight_on_one_connection(redis_url):
    async def main():
        client = resp.Redis(redis_url)
        echoes = await asyncio.gather(*[client.call("ECHO", f"m{i}") for i in range(500)])
        ids = await asyncio.gather(*[client.call("CLIENT", "ID") for _ in range(50)])
        await client.close()
        return echoes, ids

    echoes, ids = run(main())
    assert echoes == [f"m{i}".encode() for i in range(500)]
    assert len(set(ids)) == 1  # one connection carried them all


def test_a_script_reloads_itself_after_redis_forgets_it(redis_url):
    key = f"fm-test-resp-{uuid.uuid4().hex}"
    script = resp.Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")

    async def main():
        client = resp.Redis(redis_url)
        first = await client.script(script, [key], [2])
        redis.Redis.from_url(redis_url).script_flush()
        second = await client.script(script, [key], [3])
        await client.close()
        return first, second

    try:
        assert run(main()) == (2, 5)
    finally:
        redis.Redis.from_url(redis_url).delete(key)


def test_an_error_reply_raises_and_the_connection_stays_usable(redis_url):
    async def main():
        client = resp.Redis(redis_url)
        with pytest.raises(ResponseError, match="unknown command"):
            await client.call("NO-SUCH-COMMAND")
        answer = await client.call("ECHO", "still here")
        await client.close()
        return answer

    assert run(main()) == b"still here"


def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(redis_url):
    async def main():
        client = resp.Redis(redis_url)
        blocked = asyncio.ensure_future(client.call("BLPOP", f"fm-test-resp-{uuid.uuid4().hex}", "0.2"))
        await asyncio.sleep(0.05)
        blocked.cancel()  # its reply (nil, after 0.2 s) still comes, first, and must be dropped
        after = await client.call("ECHO", "mine")
        await client.close()
        return after

    assert run(main()) == b"mine"


def test_a_silent_server_fails_every_waiting_command_with_a_timeout():
    async def main():
        async def silent(reader, writer):
            await reader.read(1 << 16)
            await asyncio.sleep(10)

        server, url = await fake_server(silent)
        client = resp.Redis(url, timeout_s=0.3)
        t0 = time.monotonic()
        results = await asyncio.gather(*[client.call("PING") for _ in range(3)], return_exceptions=True)
        server.close()
        return results, time.monotonic() - t0

    results, seconds = run(main())
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert 0.3 <= seconds < 2


def test_a_dropped_connection_fails_its_commands_and_the_next_command_reconnects():
    async def main():
        connections = []

        async def hang_up_first(reader, writer):
            connections.append(writer)
            await reader.read(1 << 16)
            if len(connections) == 1:
                writer.close()
                return
            writer.write(b"+PONG\r\n")
            await writer.drain()

        server, url = await fake_server(hang_up_first)
        client = resp.Redis(url)
        with pytest.raises(ConnectionError):
            await client.call("PING")
        answer = await client.call("PING")
        server.close()
        return answer, len(connections)

    assert run(main()) == (b"PONG", 2)


def test_nothing_listening_is_a_connection_error():
    port = free_port()  # nothing listens there

    async def main():
        await resp.Redis(f"redis://127.0.0.1:{port}/0").call("PING")

    with pytest.raises(ConnectionError, match="cannot connect"):
        run(main())


def test_a_connection_closed_before_its_first_command_is_replaced_once(redis_url, monkeypatch):
    """A connection that dies between its opening and the first command sent on it (a restarting Redis, a proxy
    dropping it) carried nothing: the command goes out on one fresh connection, not to the caller as an outage.
    A second such death is an outage."""
    opened = []
    real_open = resp.Redis._open

    async def open_then_lose(self, dead: int):
        conn = await real_open(self)
        opened.append(conn)
        if len(opened) <= dead:
            conn.close(ConnectionError("dropped"))
        return conn

    async def main(dead: int):
        monkeypatch.setattr(resp.Redis, "_open", lambda self: open_then_lose(self, dead))
        client = resp.Redis(redis_url)
        try:
            return await client.call("PING")
        finally:
            await client.close()

    assert run(main(dead=1)) == b"PONG"
    assert len(opened) == 2
    opened.clear()
    with pytest.raises(ConnectionError, match="closed"):
        run(main(dead=2))
    assert len(opened) == 2
