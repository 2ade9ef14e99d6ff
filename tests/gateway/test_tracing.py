"""Tracing, opt-in: a request's spans (auth, routing decision with its difficulty score, admission with the ledger's
hold, the upstream call and its first token, settlement) in one trace whose id is in the access log and the
answer's headers; recorded with the SDK's in-memory exporter, and sent over OTLP/HTTP to a collector that listens
on loopback. Off by default: no span, no header."""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from gateway import tracing
from gateway.logs import JSONFormatter
from tests.gateway.conftest import make_gateway
from tests.gateway.test_logs import Down
from tests.harness import echo_backends, gateway_app
from tests.util import serve

HARD = "explain " * 20  # LengthRouter: long enough to score past 0.5, so `auto` picks the large model


def traced_gateway(tmp_path, tokenizer, down: str | None = None):
    """A gateway recording its spans in memory; the model `down` answers every request as unavailable."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backends = echo_backends(tokenizer.decode) | ({down: Down(down)} if down else {})
    wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", tokenizer=tokenizer, backends=backends,
                         tracer_provider=provider)
    tenant_id, key = wiring.tenant()
    return wiring.app, wiring.billing, tenant_id, key, exporter


def chat(url, key, content, **extra):
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "auto", "max_tokens": 3, "messages": [{"role": "user", "content": content}],
                      **extra})


def by_name(spans) -> dict:
    found = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def test_a_request_is_one_trace_from_auth_to_settlement_and_its_id_is_logged_and_returned(tmp_path, tokenizer,
                                                                                          caplog):
    app, billing, tenant_id, key, exporter = traced_gateway(tmp_path, tokenizer)
    caplog.set_level(logging.INFO, logger="ferryman.access")
    with serve(app) as url:
        r = chat(url, key, HARD)
    assert r.status_code == 200, r.text
    spans = by_name(exporter.get_finished_spans())
    [root] = spans["POST /v1/chat/completions"]
    trace_id = format(root.context.trace_id, "032x")
    assert r.headers["x-trace-id"] == trace_id
    [line] = [json.loads(JSONFormatter().format(x)) for x in caplog.records if x.name == "ferryman.access"]
    assert line["trace_id"] == trace_id
    assert root.attributes["http.response.status_code"] == 200
    assert {s.context.trace_id for group in spans.values() for s in group} == {root.context.trace_id}

    def parent(name):
        [span] = spans[name]
        return span.parent.span_id

    for name in ("ferryman.auth", "ferryman.route", "ferryman.admit", "ferryman.backend", "ferryman.ledger.settle"):
        assert parent(name) == root.context.span_id, name
    assert parent("ferryman.ledger.reserve") == spans["ferryman.admit"][0].context.span_id
    assert parent("ferryman.first_token") == spans["ferryman.backend"][0].context.span_id
    route = spans["ferryman.route"][0].attributes
    assert route["ferryman.route_group"] == "auto"
    assert route["ferryman.difficulty"] == float(r.headers["x-ferryman-difficulty"]) > 0.5
    assert list(route["ferryman.models"])[0] == "ferryman-large" == r.headers["x-ferryman-model"]
    assert spans["ferryman.auth"][0].attributes["ferryman.tenant"] == "acme"
    [record] = billing.usage(tenant_id)
    settle = spans["ferryman.ledger.settle"][0].attributes
    assert (settle["ferryman.outcome"], settle["ferryman.cost_micros"]) == ("ok", record["cost_micros"])
    assert spans["ferryman.ledger.reserve"][0].attributes["ferryman.reserved_micros"] >= record["cost_micros"]
    backend = spans["ferryman.backend"][0]
    assert backend.attributes["ferryman.request_id"] == r.headers["x-request-id"]
    first = spans["ferryman.first_token"][0]
    assert backend.start_time <= first.start_time <= first.end_time <= backend.end_time <= root.end_time


def test_a_stream_is_traced_to_its_end_and_a_callers_traceparent_is_continued(tmp_path, tokenizer):
    app, _, _, key, exporter = traced_gateway(tmp_path, tokenizer)
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with serve(app) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions",
                          headers={"Authorization": f"Bearer {key}",
                                   "traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"},
                          json={"model": "auto", "max_tokens": 3, "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}) as r:
            body = r.read().decode()
    assert r.headers["x-trace-id"] == caller_trace
    assert body.rstrip().endswith("data: [DONE]")
    spans = by_name(exporter.get_finished_spans())
    [settle] = spans["ferryman.ledger.settle"]
    [root] = spans["POST /v1/chat/completions"]
    assert format(root.context.trace_id, "032x") == caller_trace
    assert root.parent.span_id == 0x00f067aa0ba902b7
    assert settle.parent.span_id == root.context.span_id
    assert settle.end_time <= root.end_time


def test_a_fallback_shows_as_a_failed_backend_span_then_the_one_that_served(tmp_path, tokenizer):
    app, _, _, key, exporter = traced_gateway(tmp_path, tokenizer, down="ferryman-small")
    with serve(app) as url:
        r = chat(url, key, "hi")
    assert r.headers["x-ferryman-fallback-from"] == "ferryman-small"
    tries = by_name(exporter.get_finished_spans())["ferryman.backend"]
    assert [(s.attributes["ferryman.model"], s.attributes["ferryman.outcome"], s.status.status_code)
            for s in tries] == [("ferryman-small", "unavailable", StatusCode.ERROR),
                                ("ferryman-large", "ok", StatusCode.UNSET)]


def test_a_refused_budget_ends_the_trace_at_the_ledger_with_an_error(tmp_path, tokenizer):
    app, billing, tenant_id, key, exporter = traced_gateway(tmp_path, tokenizer)
    billing.set_budget(tenant_id, limit_micros=1)  # one micro-dollar: nothing fits
    with serve(app) as url:
        r = chat(url, key, "hi")
    assert r.status_code == 402
    spans = by_name(exporter.get_finished_spans())
    assert spans["ferryman.ledger.reserve"][0].status.status_code == StatusCode.ERROR
    assert "ferryman.backend" not in spans
    assert "ferryman.ledger.settle" not in spans
    assert spans["POST /v1/chat/completions"][0].attributes["http.response.status_code"] == 402


def test_tracing_is_off_by_default(tmp_path, tokenizer):
    app, _, _, key, _ = make_gateway(tmp_path, tokenizer)
    assert app.state.settings.otlp_endpoint is None
    with serve(app) as url:
        r = chat(url, key, "hi")
    assert r.status_code == 200
    assert "x-trace-id" not in r.headers


def test_spans_reach_an_otlp_http_collector(tmp_path, tokenizer):
    received = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"], body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    provider = tracing.provider(f"http://127.0.0.1:{collector.server_port}/v1/traces")
    try:
        wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", tokenizer=tokenizer, tracer_provider=provider)
        _, key = wiring.tenant()
        with serve(wiring.app) as url:
            r = chat(url, key, "hi")
        provider.force_flush()
    finally:
        provider.shutdown()
        collector.shutdown()
    [(path, content_type, body)] = received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    sent = ExportTraceServiceRequest.FromString(body)
    spans = [s for rs in sent.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert {s.trace_id.hex() for s in spans} == {r.headers["x-trace-id"]}
    assert {"ferryman.route", "ferryman.backend", "ferryman.ledger.settle"} <= {s.name for s in spans}
    [resource] = {a.value.string_value for rs in sent.resource_spans for a in rs.resource.attributes
                  if a.key == "service.name"}
    assert resource == "ferryman"
