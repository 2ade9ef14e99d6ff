"""HTTP limits below the app (gateway/http_limits.py, issue 26 point 4), tried with raw sockets against the gateway
as `ferryman serve` runs it: a huge header is refused after its first kilobytes and leaves no memory behind, too
many headers and too long a URL are refused, malformed HTTP and every refusal get an OpenAI error object, a
request that does not arrive in time gets 408, an idle keep-alive connection is closed, and one address cannot
hold more connections than its cap."""
import json
import os
import select
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn

from gateway.config import Settings
from gateway.http_limits import uvicorn_config
from tests.billing.helpers import gateway_app
from tests.harness import free_port


@contextmanager
def guarded_gateway(tmp_path, **limits):
    app, billing = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}")
    settings = Settings(**limits)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        billing.close()


def answer(sock: socket.socket, timeout_s: float = 5.0) -> tuple[int, dict | None, bytes]:
    """Read a response until the server closes: (status, the JSON body if any, raw bytes)."""
    sock.settimeout(timeout_s)
    raw = b""
    try:
        while chunk := sock.recv(65536):
            raw += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    return status, json.loads(body) if body.startswith(b"{") else None, raw


def send_until_answered(sock: socket.socket, head: bytes, filler: bytes, total: int) -> int:
    """Send `head` then `filler` up to `total` bytes, stopping as soon as the server answers; bytes sent."""
    sock.sendall(head)
    sent = len(head)
    while sent < total:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(filler)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(filler)
    return sent


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_64_mib_header_is_refused_after_its_first_kilobytes_and_leaves_no_memory(tmp_path):
    with guarded_gateway(tmp_path) as port:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            sent = send_until_answered(s, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, 64 << 20)
            status, body, _ = answer(s)
        assert status == 431
        assert body["error"]["code"] == "request_header_fields_too_large"
        assert "32768 bytes" in body["error"]["message"]
        assert time.perf_counter() - started < 3
        assert sent < 8 << 20  # refused long before 64 MiB: nothing buffered it whole

        before = rss_bytes()

        def flood():
            with socket.create_connection(("127.0.0.1", port)) as s:
                send_until_answered(s, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", b"b" * 65536, 16 << 20)
                answer(s)

        floods = [threading.Thread(target=flood) for _ in range(16)]
        for t in floods:
            t.start()
        for t in floods:
            t.join(30)
        assert rss_bytes() - before < 32 << 20  # 16 x 16 MiB once grew the gateway by 370 MB, never given back


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
     431, "request_header_fields_too_large"),
    (b"GET /v1/models?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /v1/models HTTP/1.1\r\nHost x\r\n\r\n", 400, "malformed_http"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n", 400, "malformed_http"),
])
def test_too_many_headers_too_long_a_url_and_malformed_http_get_openai_errors(tmp_path, request_bytes, status, code):
    with guarded_gateway(tmp_path) as port, socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request_bytes)
        got, body, raw = answer(s)
    assert got == status, raw
    assert body["error"]["code"] == code, raw
    assert body["error"]["message"], raw
    assert b"content-type: application/json" in raw


@pytest.mark.slow
def test_a_request_that_does_not_arrive_in_time_gets_408_and_an_idle_keep_alive_connection_is_closed(tmp_path):
    with guarded_gateway(tmp_path, request_timeout_s=1.0, keep_alive_timeout_s=0.5) as port:
        with socket.create_connection(("127.0.0.1", port)) as s:  # a slowloris: a byte of head now and then
            started = time.perf_counter()
            for byte in b"GET /v1/models HTTP/1.1\r\nHost":
                s.sendall(bytes([byte]))
                time.sleep(0.1)
                if select.select([s], [], [], 0)[0]:
                    break
            status, body, _ = answer(s)
            assert status == 408
            assert body["error"]["code"] == "request_timeout"
            assert 0.9 < time.perf_counter() - started < 3
        with socket.create_connection(("127.0.0.1", port)) as s:  # connects and never sends a byte
            assert answer(s)[0] == 408
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            started = time.perf_counter()
            assert s.recv(65536) == b""  # closed by the server once idle past keep_alive_timeout_s
            assert time.perf_counter() - started < 2


def test_one_address_holds_at_most_its_cap_of_connections_and_others_are_served_meanwhile(tmp_path):
    with guarded_gateway(tmp_path, max_connections_per_client=4) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            status, body, _ = answer(extra)
        assert status == 429
        assert body["error"]["code"] == "too_many_connections"
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # those within the cap are served
        held[0].settimeout(5)
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
        for s in held:
            s.close()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port)) as again:  # a closed connection frees its place
            again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            again.settimeout(5)
            assert again.recv(65536).startswith(b"HTTP/1.1 200")
