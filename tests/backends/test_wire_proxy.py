"""backends/wire.py behind an HTTP proxy named by the environment: absolute-form requests for a plain-HTTP
upstream, a CONNECT tunnel with TLS inside for an HTTPS one, credentials only for the proxy, NO_PROXY and
loopback going direct, a refused CONNECT as a clear error.

The upstream is named `upstream.test`, which does not resolve: only the proxy (which maps it to a loopback
server) can reach it, so an answer proves the request went through the proxy."""
from __future__ import annotations

import asyncio
import ssl
import subprocess

import pytest

from backends.wire import Pool, WireError
from tests.backends.test_wire import WHOLE, serve

NAME = "upstream.test"


@pytest.fixture(autouse=True)
def no_proxy_from_outside(monkeypatch):
    """Each test names its own proxy: none from the machine's environment (either case) may leak in."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


class RecordingProxy:
    """An HTTP proxy on loopback: absolute-form requests and CONNECT, both to `upstream.test` only; it keeps
    the head of what each connection asked it first, then relays bytes both ways."""

    def __init__(self, upstream_port: int, refuse_connect: bool = False):
        self.upstream_port, self.refuse_connect, self.heads = upstream_port, refuse_connect, []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head.decode("latin-1"))
        method, target = head.split(b" ", 2)[:2]
        assert NAME.encode() in target
        if method == b"CONNECT" and self.refuse_connect:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        if method == b"CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(head)  # absolute form: the server takes it as it is
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
def tls_files(tmp_path):
    """A self-signed certificate for upstream.test."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}"],
                   check=True, capture_output=True)
    return cert, key


def test_plain_http_upstream_goes_through_the_proxy_in_absolute_form_with_its_credentials(monkeypatch):
    async def main():
        server, accepted = await serve(WHOLE)
        proxy = RecordingProxy(server.sockets[0].getsockname()[1])
        monkeypatch.setenv("HTTP_PROXY", f"http://me:s%40cret@127.0.0.1:{await proxy.start()}")
        p = Pool(f"http://{NAME}:8000/v1", {"authorization": "Bearer upstream-key"}, timeout_s=5,
                 connect_timeout_s=2, max_connections=2)
        bodies = [(await p.post("/chat/completions", b"{}"))[1] for _ in range(3)]
        p.close()
        server.close()
        return bodies, proxy.heads, len(accepted)

    bodies, heads, connections = asyncio.run(main())
    assert bodies == [b"hello"] * 3 and connections == 1 and len(heads) == 1  # one kept-alive connection
    assert heads[0].startswith(f"POST http://{NAME}:8000/v1/chat/completions HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic bWU6c0BjcmV0\r\n" in heads[0]  # me:s@cret


def test_https_upstream_is_tunnelled_with_tls_end_to_end_and_the_origin_never_sees_proxy_credentials(
        monkeypatch, tls_files):
    cert, key = tls_files
    seen_by_origin = []

    async def main():
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)

        async def origin(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            seen_by_origin.append(head.decode("latin-1"))
            await reader.readexactly(2)
            writer.write(WHOLE)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(origin, "127.0.0.1", 0, ssl=tls)
        proxy = RecordingProxy(server.sockets[0].getsockname()[1])
        monkeypatch.setenv("HTTPS_PROXY", f"http://me:pw@127.0.0.1:{await proxy.start()}")
        p = Pool(f"https://{NAME}/v1", {}, timeout_s=5, connect_timeout_s=2, max_connections=2)
        p.ssl.load_verify_locations(cert)  # trust the test's own certificate; hostname checking stays on
        answer, body = await p.post("/chat/completions", b"{}")
        p.close()
        server.close()
        return answer.status, body, proxy.heads

    status, body, heads = asyncio.run(main())
    assert (status, body) == (200, b"hello")
    assert heads[0].startswith(f"CONNECT {NAME}:443 HTTP/1.1\r\n") and "Proxy-Authorization: Basic" in heads[0]
    assert seen_by_origin[0].startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "Proxy-Authorization" not in seen_by_origin[0]


def test_a_refused_connect_is_a_wire_error_that_says_so(monkeypatch):
    async def main():
        proxy = RecordingProxy(1, refuse_connect=True)
        monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{await proxy.start()}")
        p = Pool(f"https://{NAME}/v1", {}, timeout_s=5, connect_timeout_s=2, max_connections=1)
        with pytest.raises(WireError, match="refused CONNECT upstream.test:443: HTTP/1.1 407"):
            await p.post("/chat/completions", b"{}")

    asyncio.run(main())


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", None])
def test_no_proxy_and_loopback_upstreams_go_direct(monkeypatch, no_proxy):
    """The proxy here is a dead port: only a direct connection can answer."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    if no_proxy:
        monkeypatch.setenv("NO_PROXY", no_proxy)

    async def main():
        server, _ = await serve(WHOLE)
        p = Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {}, timeout_s=5, connect_timeout_s=2,
                 max_connections=1)
        body = (await p.post("/x", b"{}"))[1]
        p.close()
        server.close()
        return body

    assert asyncio.run(main()) == b"hello"


def test_a_proxy_named_for_a_remote_upstream_is_used_unless_no_proxy_lists_it(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert Pool(f"https://{NAME}/v1", {}, timeout_s=1, connect_timeout_s=1, max_connections=1).proxy.host == \
        "proxy.internal"
    monkeypatch.setenv("NO_PROXY", ".test")
    assert Pool(f"https://{NAME}/v1", {}, timeout_s=1, connect_timeout_s=1, max_connections=1).proxy is None
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.internal:1080")
    monkeypatch.delenv("NO_PROXY")
    with pytest.raises(ValueError, match="only http:// proxies"):
        Pool(f"https://{NAME}/v1", {}, timeout_s=1, connect_timeout_s=1, max_connections=1)
