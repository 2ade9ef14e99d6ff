"""The request path's Redis client: one connection per process, every command pipelined, replies in order.

redis-py's asyncio client takes a pooled connection per command and parses replies in Python, and its sync
client blocks the event loop for a round trip: at 32 requests in flight the four Redis calls of a request (admit,
hold, settle, release) cost more CPU than the rest of the money path. Here a command is queued on one connection
and the commands queued in one turn of the event loop go out in one write; Redis answers a connection's commands
in order, so each reply resolves the oldest waiting command, parsed by hiredis. Only what the request path
needs: scripts (EVALSHA, loaded on NOSCRIPT) and plain commands. Errors are redis-py's, so callers catch one kind.

A command unanswered for `timeout_s` (a stopped or unreachable Redis) closes the connection and fails every
command waiting on it with redis.exceptions.TimeoutError; the next command connects afresh.
"""
from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError


class Script:
    def __init__(self, text: str):
        self.text, self.sha = text, hashlib.sha1(text.encode()).hexdigest()


class Redis:
    def __init__(self, url: str, timeout_s: float = 2.0):
        u = urlparse(url)
        if u.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme '{u.scheme}' (redis://, rediss:// or unix://)")
        self.url, self.timeout_s = u, timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future | None = None

    async def call(self, *args):
        for attempt in range(2):
            conn = self._conn
            if conn is None or not conn.open or conn.loop is not asyncio.get_running_loop():  # (tests run many loops)
                conn = await self._connect()
            if conn.open or attempt:
                return await conn.send(args)
            # Closed between its opening and this command (a Redis restarting, a proxy dropping it): nothing was
            # sent on it, so one fresh connection is safe to try before the caller sees an outage.

    async def script(self, script: Script, keys: list, args: list):
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script.text, len(keys), *keys, *args)  # loads it for the next EVALSHA

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close(ConnectionError("client closed"))

    async def _connect(self) -> _Connection:
        # Concurrent first commands share one connection attempt.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _Connection:
        loop, u = asyncio.get_running_loop(), self.url
        conn = _Connection(self.timeout_s)
        try:
            if u.scheme == "unix":
                opening = loop.create_unix_connection(lambda: conn, u.path)
            else:
                tls = ssl.create_default_context() if u.scheme == "rediss" else None
                opening = loop.create_connection(lambda: conn, u.hostname or "localhost", u.port or 6379, ssl=tls)
            await asyncio.wait_for(opening, self.timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to Redis at {u.hostname or u.path}: {exc}") from None
        db = u.path.strip("/") if u.scheme != "unix" else ""
        try:
            if u.password:
                await conn.send(("AUTH", *([unquote(u.username)] if u.username else []), unquote(u.password)))
            if db and db != "0":
                await conn.send(("SELECT", db))
        except ResponseError as exc:
            conn.close(ConnectionError(f"Redis refused the connection's set-up: {exc}"))
            raise ConnectionError(f"Redis refused the connection's set-up: {exc}") from None
        self._conn = conn
        return conn


class _Connection(asyncio.Protocol):
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[tuple[asyncio.Future, float]] = deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.loop = asyncio.get_running_loop()
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport, self.open = transport, True

    def connection_lost(self, exc) -> None:
        self.close(ConnectionError(f"Redis closed the connection: {exc or 'end of stream'}"))

    def send(self, args) -> asyncio.Future:
        if not self.open:
            raise ConnectionError("the Redis connection is closed")
        future = self.loop.create_future()
        self.waiting.append((future, time.monotonic()))
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(_pack(args))
        if self._watch is None:
            self._watch = self.loop.call_later(self.timeout_s, self._check)
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future, _ = self.waiting.popleft()
            if future.done():  # its caller was cancelled: the reply is read and dropped
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def close(self, exc: Exception) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.abort()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    def _flush(self) -> None:
        if self.open and self.out:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _check(self) -> None:
        """Fail everything if the oldest command waited too long; else look again when it would have."""
        self._watch = None
        if not self.waiting:
            return
        due = self.waiting[0][1] + self.timeout_s
        if time.monotonic() >= due:
            self.close(TimeoutError(f"Redis did not answer within {self.timeout_s:g} s"))
        else:
            self._watch = self.loop.call_later(due - time.monotonic(), self._check)


def _pack(args) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif not isinstance(arg, bytes):
            arg = str(arg).encode()  # ints; floats as Python writes them (Redis parses that)
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)
