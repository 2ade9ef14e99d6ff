"""A lean HTTP/1.1 client for the proxy leg: POST a JSON body, read the answer whole or as a stream of SSE lines,
over keep-alive connections pooled per upstream (plain TCP or TLS).

httpx cost ~40% of the gateway's CPU per proxied request (its URL, cookie, auth and redirect layers, then h11 and
anyio under httpcore); an OpenAI-compatible upstream needs none of it. A connection goes back to the pool only when
its answer was read to the end and the server keeps it open; a stream left half-read is closed.

Proxies as httpx, requests and curl read them: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY (either case, http:// proxies,
credentials in the URL sent as Proxy-Authorization) and NO_PROXY; loopback upstreams never go through a proxy
(it could not reach them). A plain-HTTP upstream gets absolute-form requests on a kept-alive connection to the
proxy; an HTTPS upstream gets a CONNECT tunnel, TLS inside it end to end, and the proxy's credentials only on
the CONNECT.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
import time
from typing import AsyncIterator
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import httpx


class WireError(Exception):
    """The upstream could not be reached, did not answer in time, or answered something that is not HTTP/1.1."""


class WireTimeout(WireError):
    """No data from the upstream within the read time-out."""


class Answer:
    """An upstream's status and headers (names lower-case); the body is read through the pool that made it."""

    def __init__(self, status: int, headers: dict[str, str]):
        self.status, self.headers = status, headers


class QuickAck(asyncio.StreamReaderProtocol):
    """A stream protocol that acknowledges every segment at once (TCP_QUICKACK re-armed on each read).

    An upstream that writes a response's head and body in two sends without TCP_NODELAY (Python's http.server and
    servers built like it) holds the body back (Nagle) until the head is acknowledged, and Linux delays that ACK
    up to 40 ms: ~44 ms per request. The kernel drops quick-ACK mode again on its own, so it is set after every
    read; setting it also sends an ACK that is pending. Our own side has TCP_NODELAY (asyncio's default) and
    writes each request in one send."""

    on_eof = None  # the pool's: called when the server closes this connection while it sits idle

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self._sock = sock if QUICKACK and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None
        self.quickack()

    def data_received(self, data: bytes) -> None:
        self.quickack()
        super().data_received(data)

    def eof_received(self):
        if self.on_eof is not None:
            self.on_eof()
        return super().eof_received()

    def quickack(self) -> None:
        """Called after each read, and after sending a request (sending right after a read puts the kernel back
        into delayed-ACK mode, so the answer's first segment would wait again)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere the stall is the platform's
SPARE_AFTER_CLOSE_S = 1.0  # a server that closes a connection this soon after answering closes every one


async def open_connection(host: str, port: int, **kwargs):
    """asyncio.open_connection with QuickAck as the protocol."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
    protocol = QuickAck(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port, **kwargs)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class Pool:
    def __init__(self, base_url: str, headers: dict[str, str], *, timeout_s: float, connect_timeout_s: float,
                 max_connections: int):
        url = urlsplit(base_url)
        self.host, self.tls = url.hostname, url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.path = url.path.rstrip("/")
        self.ssl = httpx.create_ssl_context() if self.tls else None  # httpx's CA bundle and SSL_CERT_* handling
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{host}:{self.port}"
        host = host if url.port in (None, 443 if self.tls else 80) else self.authority
        self.proxy = _proxy_for(url.scheme, self.host)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        # A plain-HTTP request through a proxy names its whole URL and carries the proxy's credentials.
        self.target = f"http://{host}" if self.proxy and not self.tls else ""
        if self.target and self.proxy.auth:
            extra += f"Proxy-Authorization: {self.proxy.auth}\r\n"
        # Everything before Content-Length is the same for every request: built once.
        self.head = (f"Host: {host}\r\nUser-Agent: ferryman\r\nAccept: */*\r\nContent-Type: application/json\r\n"
                     f"{extra}").encode("latin-1")
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)
        self.spare: asyncio.Future | None = None  # the next request's connection, opening (see _open_spare)

    def close(self) -> None:
        if self.spare is not None:
            self.spare.cancel()
        while self.idle:
            self.idle.pop()[1].close()

    async def post(self, path: str, body: bytes, method: str = "POST") -> tuple[Answer, bytes]:
        """The whole answer: status, headers and body."""
        async with self.slots:
            conn, answer = await self._send(self._request(path, body, method))
            try:
                data = b"".join([chunk async for chunk in self._body(conn[0], answer)])
            except BaseException:
                conn[1].close()
                raise
            self._release(conn, answer)
            return answer, data

    @contextlib.asynccontextmanager
    async def stream(self, path: str, body: bytes):
        """(answer, body chunks as they arrive). Leaving before the end closes the connection instead of pooling it."""
        async with self.slots:
            conn, answer = await self._send(self._request(path, body))
            done = False

            async def chunks() -> AsyncIterator[bytes]:
                nonlocal done
                async for chunk in self._body(conn[0], answer):
                    yield chunk
                done = True

            try:
                yield answer, chunks()
            finally:
                self._release(conn, answer) if done else conn[1].close()

    def _request(self, path: str, body: bytes, method: str = "POST") -> bytes:
        return b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            method.encode(), (self.target + self.path + path).encode(), self.head, len(body), body)

    def _release(self, conn, answer: Answer) -> None:
        if answer.headers.get("connection", "").lower() == "close":
            conn[1].close()
            self._open_spare()
        else:
            released = time.monotonic()
            _on_eof(conn, lambda: self._closed_idle(conn, released))
            self.idle.append(conn)

    def _closed_idle(self, conn, released: float) -> None:
        """The server closed a pooled connection. Within a second of its answer: it closes every connection after
        one answer (without saying so), so the next one is opened now."""
        if conn in self.idle:
            self.idle.remove(conn)
            conn[1].close()
            if time.monotonic() - released < SPARE_AFTER_CLOSE_S:
                self._open_spare()

    def _open_spare(self) -> None:
        """An upstream that closes each connection after one answer (HTTP/1.0, Connection: close, or silently)
        makes every request connect first. The next request's connection is opened now instead, off its path,
        while this answer goes back to the client: bench/vs_peers.py --upstreams, the closing styles."""
        if self.spare is None and not self.idle:
            self.spare = asyncio.ensure_future(self._spare())

    async def _spare(self) -> None:
        try:
            self.idle.append(await self._connect())
        except WireError:
            pass  # the next request connects itself, and says why that failed
        finally:
            self.spare = None

    async def _send(self, request: bytes):
        # A pooled connection that the server closed while it sat idle fails before the first byte of an answer:
        # the request then goes again on a fresh connection (none of it reached the upstream's application).
        while self.idle:
            conn = self.idle.pop()
            if conn[0].at_eof() or conn[1].is_closing():
                conn[1].close()
                continue
            _on_eof(conn, None)  # in use: an end now is this exchange's to handle
            try:
                return conn, await self._exchange(conn, request)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn[1].close()
                if getattr(exc, "partial", b""):
                    raise WireError(_describe(exc)) from None
        conn = await self._connect()
        try:
            return conn, await self._exchange(conn, request)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            conn[1].close()
            raise WireError(_describe(exc)) from None

    async def _connect(self):
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.proxy is None:
                    return await open_connection(self.host, self.port, ssl=self.ssl,
                                                 server_hostname=self.host if self.tls else None)
                return await self._through_proxy()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise WireError(f"ConnectError {_describe(exc)}".strip()) from None

    async def _through_proxy(self):
        reader, writer = await open_connection(self.proxy.host, self.proxy.port)
        if not self.tls:
            return reader, writer
        try:
            auth = f"Proxy-Authorization: {self.proxy.auth}\r\n" if self.proxy.auth else ""
            writer.write(f"CONNECT {self.authority} HTTP/1.1\r\nHost: {self.authority}\r\n{auth}\r\n".encode("latin-1"))
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            if status.split(" ")[1:2] != ["200"]:
                raise OSError(f"the proxy {self.proxy.host}:{self.proxy.port} refused CONNECT {self.authority}: "
                              f"{status[:80]}")
            await writer.start_tls(self.ssl, server_hostname=self.host)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _exchange(self, conn, request: bytes) -> Answer:
        """Send the request, read the answer's head. Any failure but a clean close of a reused connection (which
        the caller retries) closes the connection."""
        try:
            conn[1].write(request)
            conn[1].transport.get_protocol().quickack()
            head = await self._read(conn[0].readuntil(b"\r\n\r\n"))
            lines = head.decode("latin-1").split("\r\n")
            version, status = (lines[0].split(" ", 2) + [""])[:2]
            if not version.startswith("HTTP/1.") or not status.isdigit():
                raise ValueError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
            conn[1].close()
            raise WireError(_describe(exc)) from None
        except BaseException:
            conn[1].close()
            raise
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"  # HTTP/1.0 closes after each answer unless it says otherwise
        return Answer(int(status), headers)

    async def _body(self, reader: asyncio.StreamReader, answer: Answer) -> AsyncIterator[bytes]:
        try:
            if "chunked" in answer.headers.get("transfer-encoding", "").lower():
                while size := int((await self._read(reader.readuntil(b"\r\n"))).split(b";")[0], 16):
                    yield (await self._read(reader.readexactly(size + 2)))[:-2]
                while await self._read(reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then a blank line
                    pass
            elif answer.status in (204, 304):  # no body, whatever the headers say
                return
            elif (length := int(answer.headers.get("content-length", -1))) >= 0:
                if length:
                    yield await self._read(reader.readexactly(length))
            else:  # no length: the body runs to the end of the connection
                answer.headers["connection"] = "close"
                while chunk := await self._read(reader.read(1 << 16)):
                    yield chunk
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise WireError(_describe(exc)) from None

    async def _read(self, awaitable):
        try:
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except TimeoutError:
            raise WireTimeout(f"ReadTimeout: no data from the upstream in {self.timeout_s:g} s") from None


def _on_eof(conn, call) -> None:
    """What a pooled connection's protocol calls when the server closes it (a transport already lost has none)."""
    protocol = conn[1].transport.get_protocol()
    if protocol is not None:
        protocol.on_eof = call


class Proxy:
    def __init__(self, url: str):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http":
            raise ValueError(f"proxy {url!r}: only http:// proxies are supported")
        self.host, self.port = parts.hostname, parts.port or 80
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        self.auth = f"Basic {base64.b64encode(credentials.encode()).decode()}" if parts.username else None


def _proxy_for(scheme: str, host: str) -> Proxy | None:
    """The proxy the environment names for this upstream, or None (none set, NO_PROXY, or a loopback host)."""
    proxies = getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or _loopback(host) or proxy_bypass_environment(host, proxies):
        return None
    return Proxy(url)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__} {exc}".strip()
