"""Tracing, opt-in: OpenTelemetry spans for each request, exported over OTLP/HTTP to FERRYMAN_OTLP_ENDPOINT (a
collector's traces URL, e.g. http://collector:4318/v1/traces). Unset (the default), every tracer is OpenTelemetry's
no-op one: nothing is recorded, exported or added to an answer.

The spans of a tenant request (one trace; a caller's W3C `traceparent` header is continued):

    POST /v1/chat/completions   the whole request, stream included (server span; status code)
      ferryman.auth             the key's lookup (tenant)
      ferryman.route            the routing decision (route group, difficulty score, models in order)
      ferryman.admit            rate limit and budget hold for one model
        ferryman.ledger.reserve   the worst-case cost held (micro-dollars)
      ferryman.backend          the upstream call, one per model tried (a fallback's failed try is an error)
        ferryman.first_token      from the call to its first token: the time to first token
      ferryman.ledger.settle    the cost charged and the outcome

The trace id is in the access-log line (`trace_id`) and in the answer's `x-trace-id` header.
"""
from __future__ import annotations

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.logs import QUIET_PATHS

NOOP = trace.NoOpTracer()
W3C = TraceContextTextMapPropagator()


def provider(endpoint: str | None):
    """An SDK tracer provider that sends spans in batches to the OTLP/HTTP `endpoint`; None: tracing is off."""
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    made = TracerProvider(resource=Resource.create({"service.name": "ferryman"}))
    made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return made


def tracer(tracer_provider) -> trace.Tracer:
    return tracer_provider.get_tracer("ferryman") if tracer_provider else NOOP


class _Off:
    """What a span's `with` gives while tracing is off: nothing at all (a no-op tracer's span still costs ~5 us)."""

    def __enter__(self):
        return trace.INVALID_SPAN  # takes attributes and drops them

    def __exit__(self, *exc):
        return False


OFF = _Off()


def span(tracer: trace.Tracer, name: str, **attrs):
    """A child span of the current one, made current within the `with`."""
    return OFF if tracer is NOOP else tracer.start_as_current_span(name, attributes=attributes(**attrs))


def attributes(**values) -> dict:
    """Span attributes without the unknown ones (OpenTelemetry refuses None)."""
    return {f"ferryman.{k}": v for k, v in values.items() if v is not None}


class Traced:
    """ASGI middleware: a server span around each request (probes and scrapes aside), its trace id left in the
    request's state for the access log and sent back as `x-trace-id`."""

    def __init__(self, app, tracer: trace.Tracer):
        self.app, self.tracer = app, tracer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.tracer is NOOP or scope["path"] in QUIET_PATHS:
            return await self.app(scope, receive, send)
        parent = W3C.extract({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        name, attrs = f"{scope['method']} {scope['path']}", {"http.request.method": scope["method"],
                                                             "url.path": scope["path"]}
        with self.tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attrs) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            scope.setdefault("state", {})["trace_id"] = trace_id

            async def sending(message):
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        span.set_status(StatusCode.ERROR)
                    message = {**message, "headers": [*message.get("headers", ()), (b"x-trace-id", trace_id.encode())]}
                await send(message)

            await self.app(scope, receive, sending)


def start(tracer: trace.Tracer, **attrs) -> "Try | _NoTry":
    return NO_TRY if tracer is NOOP else Try(tracer, **attrs)


class _NoTry:
    def first_token(self) -> None:
        pass

    def settling(self):
        return OFF

    def end(self, outcome: str) -> None:
        pass


NO_TRY = _NoTry()


class Try:
    """One model's try at a request: its backend span and the first-token span within it. They are not made
    current: a stream's first token arrives on the request's task and its end on the response's, so they are
    ended by hand; the settle span hangs off the request's own span, wherever it runs."""

    def __init__(self, tracer: trace.Tracer, **attrs):
        self.tracer, self.parent = tracer, context.get_current()
        self.backend = tracer.start_span("ferryman.backend", context=self.parent, attributes=attributes(**attrs))
        self.first = tracer.start_span("ferryman.first_token", context=trace.set_span_in_context(self.backend))
        self.waiting = True

    def first_token(self) -> None:
        if self.waiting:
            self.waiting = False
            self.first.end()

    def settling(self):
        return self.tracer.start_as_current_span("ferryman.ledger.settle", context=self.parent)

    def end(self, outcome: str) -> None:
        if self.waiting:
            self.first.set_status(StatusCode.ERROR, "no first token")
            self.first_token()
        self.backend.set_attribute("ferryman.outcome", outcome)
        if outcome != "ok":
            self.backend.set_status(StatusCode.ERROR, outcome)
        self.backend.end()
