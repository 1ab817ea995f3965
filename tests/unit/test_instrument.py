"""`instrument()`: spans for API and task events, HTTP metrics, log keys, bounded flush."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import payments.observability as observability
from payments.observability import current_trace_id, instrument, metrics, tracing
from payments.observability.logging import logger

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
XRAY_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
ENV_VARS = (
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "JAEGER_SAMPLING_RATE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "TRACES_EXPORTER_FILE",
    "TRACES_EXPORTER_XRAY",
    "OBSERVABILITY_FLUSH_TIMEOUT_MS",
    "_X_AMZN_TRACE_ID",
)


@dataclass
class Context:
    function_name: str = "payment-gateway-fn"
    aws_request_id: str = "req-1"


@dataclass
class Calls:
    """What the instrument recorded through the metrics API."""

    calls: list[tuple[str, float, dict[str, str]]]
    configured: list[dict[str, str]]
    flushes: list[float | None]

    def named(self, name: str) -> list[tuple[float, dict[str, str]]]:
        return [(value, labels) for metric, value, labels in self.calls if metric == name]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Spy on every metric object the instrument uses (whatever metrics.py keeps inside)."""
    calls = Calls([], [], [])

    def spy(metric: Any, method: str) -> None:
        original = getattr(metric, method)

        def record(value: float = 1.0, **labels: str) -> None:
            calls.calls.append((metric.name, value, labels))
            original(value, **labels)

        monkeypatch.setattr(metric, method, record)

    for counter in (metrics.HTTP_REQUESTS_TOTAL, metrics.COLD_STARTS_TOTAL):
        spy(counter, "inc")
    for histogram in (
        metrics.HTTP_REQUEST_DURATION,
        metrics.HTTP_REQUEST_SIZE,
        metrics.HTTP_RESPONSE_SIZE,
    ):
        spy(histogram, "observe")
    monkeypatch.setattr(
        metrics, "configure", lambda **kwargs: calls.configured.append(dict(kwargs))
    )
    monkeypatch.setattr(metrics, "flush", lambda timeout=None: calls.flushes.append(timeout))
    return calls


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch, recorded: Calls) -> Iterator[InMemorySpanExporter]:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    tracing.reset_for_tests()
    exporter = InMemorySpanExporter()
    tracing.setup("test-service", exporters=[exporter])
    monkeypatch.setattr(observability, "_initialised", False)
    monkeypatch.setattr(observability, "_cold_start", True)
    yield exporter
    tracing.reset_for_tests()


def api_event(
    route_key: str = "POST /api/v1/payments",
    path: str = "/api/v1/payments",
    headers: dict[str, str] | None = None,
    body: str | None = '{"amount": 1999}',
    base64_encoded: bool = False,
) -> dict[str, Any]:
    method = route_key.split(" ", maxsplit=1)[0] if " " in route_key else "GET"
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "headers": headers or {},
        "requestContext": {"http": {"method": method, "path": path}},
        "body": body,
        "isBase64Encoded": base64_encoded,
    }


def respond(status: int = 201, body: str = '{"ok":true}') -> Callable[[dict[str, Any], Any], Any]:
    @instrument("payment-gateway")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            "statusCode": status,
            "headers": {"X-Trace-ID": current_trace_id()},
            "body": body,
        }

    return handler


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def hex_id(value: int, width: int = 32) -> str:
    return format(value, f"0{width}x")


# --------------------------------------------------------------------------- API events


def test_api_event_continues_the_incoming_traceparent(spans: InMemorySpanExporter) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=1"}
    response = respond()(api_event(headers=headers), Context())
    assert response["headers"]["X-Trace-ID"] == TRACE_ID
    span = only(spans)
    assert span.name == "POST /api/v1/payments"
    assert span.kind is SpanKind.SERVER
    assert span.context is not None and hex_id(span.context.trace_id) == TRACE_ID
    assert span.parent is not None and hex_id(span.parent.span_id, 16) == PARENT_ID
    assert span.context.trace_state.get("vendor") == "1"
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/api/v1/payments"
    assert attributes["url.path"] == "/api/v1/payments"
    assert attributes["http.response.status_code"] == 201
    assert attributes["faas.coldstart"] is True
    assert attributes["faas.invocation_id"] == "req-1"
    assert span.status.status_code is StatusCode.UNSET


def test_api_event_continues_an_xray_trace(spans: InMemorySpanExporter) -> None:
    respond()(api_event(headers={"x-amzn-trace-id": XRAY_HEADER}), Context())
    span = only(spans)
    assert span.context is not None
    assert hex_id(span.context.trace_id) == "5759e988bd862e3fe1be46a994272793"
    assert span.parent is not None and hex_id(span.parent.span_id, 16) == "53995c3f42cd8ad8"


def test_api_event_without_context_starts_an_xray_compatible_trace(
    spans: InMemorySpanExporter,
) -> None:
    before = int(time.time())
    response = respond()(api_event(), Context())
    after = int(time.time())
    span = only(spans)
    assert span.parent is None and span.context is not None
    trace_id = hex_id(span.context.trace_id)
    assert response["headers"]["X-Trace-ID"] == trace_id
    assert before <= int(trace_id[:8], 16) <= after


def test_route_template_not_raw_path(spans: InMemorySpanExporter, recorded: Calls) -> None:
    event = api_event(
        route_key="GET /api/v1/payments/{payment_no}",
        path="/api/v1/payments/PAY123",
        body=None,
    )
    respond(200)(event, Context())
    span = only(spans)
    assert span.name == "GET /api/v1/payments/{payment_no}"
    assert dict(span.attributes or {})["url.path"] == "/api/v1/payments/PAY123"
    ((_, labels),) = recorded.named("http_requests_total")
    assert labels == {"method": "GET", "path": "/api/v1/payments/{payment_no}", "status": "200"}


@pytest.mark.parametrize("route_key", ["$default", "", None])
def test_unknown_route_is_unmatched(
    spans: InMemorySpanExporter, recorded: Calls, route_key: str | None
) -> None:
    event = api_event(path="/nope")
    event["routeKey"] = route_key
    event["requestContext"]["http"]["method"] = "GET"
    respond(404)(event, Context())
    assert only(spans).name == "GET unmatched"
    ((_, labels),) = recorded.named("http_requests_total")
    assert labels["path"] == "unmatched" and labels["status"] == "404"


def test_http_metrics_are_recorded_exactly_once(
    spans: InMemorySpanExporter, recorded: Calls
) -> None:
    respond(201, body="x" * 17)(api_event(body="é" * 5), Context())
    labels = {"method": "POST", "path": "/api/v1/payments"}
    assert recorded.named("http_requests_total") == [(1.0, {**labels, "status": "201"})]
    ((seconds, duration_labels),) = recorded.named("http_request_duration_seconds")
    assert duration_labels == {**labels, "status": "201"}
    assert 0 <= seconds < 1
    assert recorded.named("http_request_size_bytes") == [(10.0, labels)]  # UTF-8 bytes
    assert recorded.named("http_response_size_bytes") == [(17.0, labels)]


def test_base64_bodies_are_measured_decoded(spans: InMemorySpanExporter, recorded: Calls) -> None:
    @instrument("payment-gateway")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            "statusCode": 200,
            "body": base64.b64encode(b"abc").decode(),
            "isBase64Encoded": True,
        }

    handler(api_event(body=base64.b64encode(b"12345678").decode(), base64_encoded=True), Context())
    assert recorded.named("http_request_size_bytes")[0][0] == 8.0
    assert recorded.named("http_response_size_bytes")[0][0] == 3.0


def test_non_proxy_result_counts_as_200(spans: InMemorySpanExporter, recorded: Calls) -> None:
    @instrument("payment-gateway")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"plain": "json"}

    assert handler(api_event(), Context()) == {"plain": "json"}
    assert recorded.named("http_requests_total")[0][1]["status"] == "200"
    assert recorded.named("http_response_size_bytes")[0][0] == len(json.dumps({"plain": "json"}))


def test_5xx_response_sets_error_status(spans: InMemorySpanExporter, recorded: Calls) -> None:
    respond(503)(api_event(), Context())
    span = only(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["http.response.status_code"] == 503
    assert recorded.named("http_requests_total")[0][1]["status"] == "503"


def test_4xx_response_is_not_a_server_error(spans: InMemorySpanExporter) -> None:
    respond(422)(api_event(), Context())
    assert only(spans).status.status_code is StatusCode.UNSET


def test_handler_exception_is_a_500_recorded_once_and_reraised(
    spans: InMemorySpanExporter, recorded: Calls
) -> None:
    @instrument("payment-gateway")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise KeyError("sk_test_51Hsecretvalue leaked")

    with pytest.raises(KeyError):
        handler(api_event(), Context())
    span = only(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["http.response.status_code"] == 500
    (event,) = [e for e in span.events if e.name == "exception"]
    attributes = dict(event.attributes or {})
    assert attributes["exception.type"] == "KeyError"
    assert "sk_test_51H" not in json.dumps(attributes)
    labels = {"method": "POST", "path": "/api/v1/payments", "status": "500"}
    assert recorded.named("http_requests_total") == [(1.0, labels)]
    assert len(recorded.named("http_request_duration_seconds")) == 1
    assert len(recorded.named("http_request_size_bytes")) == 1
    assert recorded.named("http_response_size_bytes") == [
        (0.0, {"method": "POST", "path": "/api/v1/payments"})
    ]


def test_unsampled_request_still_answers_and_correlates(
    spans: InMemorySpanExporter, recorded: Calls
) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    response = respond()(api_event(headers=headers), Context())
    assert response["headers"]["X-Trace-ID"] == TRACE_ID
    assert spans.get_finished_spans() == ()
    assert len(recorded.named("http_requests_total")) == 1


# --------------------------------------------------------------------------- task events


def task_event(step: str = "RiskCheck", **payment: Any) -> tuple[dict[str, Any], str, str]:
    """A state-machine payload whose carrier comes from a real (exported) parent span."""
    with tracing.get_tracer().start_as_current_span("POST /api/v1/payments") as parent:
        carrier = tracing.inject_context()
    context = parent.get_span_context()
    event = {
        "step": step,
        "trace_context": carrier,
        "payment": {
            "merchant_id": "M1",
            "amount": 1999,
            "currency": "USD",
            "payment_no": "PAY1",
            "card_number": "4242424242424242",
            **payment,
        },
    }
    return event, hex_id(context.trace_id), hex_id(context.span_id, 16)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_task_event_nests_step_and_service_spans(spans: InMemorySpanExporter) -> None:
    event, trace_id, parent_id = task_event()

    @instrument("risk-service")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        attributes: dict[str, str | int] = {"risk.decision": "approve", "risk.score": 12}
        tracing.annotate_step(**attributes)
        with trace.get_tracer("business").start_as_current_span("score"):
            pass
        return {"decision": "approve", "score": 12}

    result = handler(event, Context(function_name="risk-fn"))
    assert result == {"decision": "approve", "score": 12}
    named = by_name(spans)
    step, service, inner = named["RiskCheck"], named["risk-service"], named["score"]
    for span in (step, service, inner):
        assert span.context is not None and hex_id(span.context.trace_id) == trace_id
    assert step.parent is not None and hex_id(step.parent.span_id, 16) == parent_id
    assert step.context is not None and service.context is not None
    assert service.parent is not None and service.parent.span_id == step.context.span_id
    assert inner.parent is not None and inner.parent.span_id == service.context.span_id
    assert step.kind is SpanKind.INTERNAL and service.kind is SpanKind.SERVER
    step_attributes = dict(step.attributes or {})
    assert step_attributes["merchant_id"] == "M1"
    assert step_attributes["amount"] == 1999
    assert step_attributes["currency"] == "USD"
    assert step_attributes["payment_no"] == "PAY1"
    assert "card_number" not in step_attributes
    assert step_attributes["risk.decision"] == "approve"
    assert step_attributes["risk.score"] == 12
    assert "risk.decision" not in dict(service.attributes or {})


def test_task_exception_marks_both_spans_and_is_reraised(spans: InMemorySpanExporter) -> None:
    event, _, _ = task_event(step="ChannelPayment")

    class ChannelDeclined(Exception):
        pass

    @instrument("channel-adapter")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise ChannelDeclined("declined for pm_card_visa")

    with pytest.raises(ChannelDeclined):
        handler(event, Context())
    named = by_name(spans)
    for name in ("ChannelPayment", "channel-adapter"):
        span = named[name]
        assert span.status.status_code is StatusCode.ERROR
        (exception,) = [e for e in span.events if e.name == "exception"]
        attributes = dict(exception.attributes or {})
        assert str(attributes["exception.type"]).endswith("ChannelDeclined")
        assert "pm_card_visa" not in json.dumps(attributes)


def test_task_without_carrier_starts_a_trace(spans: InMemorySpanExporter) -> None:
    @instrument("order-service")
    def handler(event: dict[str, Any], context: Any) -> str:
        return "ok"

    assert handler({"step": "CreateOrder", "trace_context": None}, Context()) == "ok"
    named = by_name(spans)
    assert named["CreateOrder"].parent is None
    assert set(named) == {"CreateOrder", "order-service"}


def test_task_step_attributes_are_redacted(spans: InMemorySpanExporter) -> None:
    event, _, _ = task_event(merchant_id="jane.doe@example.com")

    @instrument("risk-service")
    def handler(event: dict[str, Any], context: Any) -> None:
        tracing.annotate_step(signature="a" * 64, note="token " + "sk_" + "live_abcdef123456")

    handler(event, Context())
    attributes = dict(by_name(spans)["RiskCheck"].attributes or {})
    assert attributes["merchant_id"] == "j***@example.com"
    assert attributes["signature"] == "[REDACTED]"
    assert "sk_live_" not in str(attributes["note"])


# --------------------------------------------------------------------------- other events


def test_other_event_gets_one_span_named_after_the_service(spans: InMemorySpanExporter) -> None:
    @instrument("reconciler")
    def handler(event: dict[str, Any], context: Any) -> int:
        return 7

    assert handler({"source": "aws.events"}, None) == 7
    span = only(spans)
    assert span.name == "reconciler"
    assert span.kind is SpanKind.SERVER


def test_other_event_exception_is_recorded(spans: InMemorySpanExporter) -> None:
    @instrument("reconciler")
    def handler(event: dict[str, Any], context: Any) -> int:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        handler({}, None)
    assert only(spans).status.status_code is StatusCode.ERROR


# --------------------------------------------------------------------------- setup / cold start


def test_first_call_configures_once_and_counts_one_cold_start(
    spans: InMemorySpanExporter, recorded: Calls
) -> None:
    handler = respond()
    handler(api_event(), Context(function_name="gw-fn"))
    handler(api_event(), Context(function_name="gw-fn"))
    assert recorded.configured == [{"function_name": "gw-fn", "service": "payment-gateway"}]
    assert recorded.named("lambda_cold_starts_total") == [(1.0, {"function": "gw-fn"})]
    first, second = spans.get_finished_spans()
    assert dict(first.attributes or {})["faas.coldstart"] is True
    assert dict(second.attributes or {})["faas.coldstart"] is False
    assert len(recorded.flushes) == 2  # metrics flushed on every invocation


def test_function_name_falls_back_to_the_service(
    spans: InMemorySpanExporter, recorded: Calls
) -> None:
    @instrument("risk-service")
    def handler(event: dict[str, Any], context: Any) -> None:
        return None

    handler({}, None)
    assert recorded.configured == [{"function_name": "risk-service", "service": "risk-service"}]
    assert recorded.named("lambda_cold_starts_total") == [(1.0, {"function": "risk-service"})]


def test_invalid_sampler_fails_loudly_at_cold_start(
    monkeypatch: pytest.MonkeyPatch, recorded: Calls
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAEGER_SAMPLING_RATE", "lots")
    monkeypatch.setattr(observability, "_initialised", False)
    tracing.reset_for_tests()
    try:
        with pytest.raises(tracing.TracingConfigError, match="JAEGER_SAMPLING_RATE"):
            respond()(api_event(), Context())
    finally:
        tracing.reset_for_tests()


def test_current_trace_id_outside_a_span_is_fresh() -> None:
    first, second = current_trace_id(), current_trace_id()
    assert len(first) == 32 and first != second
    int(first, 16)


# --------------------------------------------------------------------------- logs


def test_logs_carry_trace_ids_and_invocation_keys_are_cleared(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    @instrument("payment-gateway")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        logger.append_keys(payment_no="PAY9", merchant_id="M9")
        logger.info("created")
        return {"statusCode": 201, "body": ""}

    handler(api_event(headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}), Context())
    logger.info("between invocations")
    inside, outside = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    span = only(spans)
    assert span.context is not None
    assert inside["trace_id"] == TRACE_ID
    assert inside["span_id"] == hex_id(span.context.span_id, 16)
    assert inside["payment_no"] == "PAY9" and inside["merchant_id"] == "M9"
    assert inside["service"] == "payment-gateway"
    assert inside["function_request_id"] == "req-1"
    assert "payment_no" not in outside and "merchant_id" not in outside
    assert "trace_id" not in outside and "function_request_id" not in outside


def test_log_keys_are_cleared_when_the_handler_raises(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    @instrument("order-service")
    def handler(event: dict[str, Any], context: Any) -> None:
        logger.append_keys(payment_no="PAY7")
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        handler({"step": "CreateOrder"}, Context())
    logger.info("after")
    assert "payment_no" not in json.loads(capsys.readouterr().out.splitlines()[-1])


# --------------------------------------------------------------------------- bounded flush


class HangingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_hung_span_exporter_cannot_delay_the_response(
    monkeypatch: pytest.MonkeyPatch, recorded: Calls
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OBSERVABILITY_FLUSH_TIMEOUT_MS", "100")
    hanging = HangingExporter()
    tracing.reset_for_tests()
    try:
        tracing.setup("hang", exporters=[hanging])
        started = time.monotonic()
        response = respond()(api_event(), Context())
        elapsed = time.monotonic() - started
        assert response["statusCode"] == 201
        assert elapsed < 0.4, elapsed
        assert len(recorded.flushes) == 1  # metrics still left through their own lane
    finally:
        hanging.release.set()
        tracing.reset_for_tests()


def test_hung_remote_write_or_failing_metrics_flush_cannot_delay_or_fail_the_response(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A receiver that accepts and never answers: the real metrics flush must give up in time.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        port = hung.getsockname()[1]
        monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_URL", f"http://127.0.0.1:{port}/api/v1/write")
        monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS", "0")
        monkeypatch.setenv("OBSERVABILITY_FLUSH_TIMEOUT_MS", "100")
        metrics.reset()
        started = time.monotonic()
        assert respond()(api_event(), Context())["statusCode"] == 201
        assert time.monotonic() - started < 0.5

    def explode(timeout: float | None = None) -> None:
        raise RuntimeError("remote write down")

    monkeypatch.setattr(metrics, "flush", explode)
    assert respond()(api_event(), Context())["statusCode"] == 201
    assert len(spans.get_finished_spans()) == 2


@pytest.mark.parametrize(("raw", "expected"), [("", 200.0), ("50", 50.0), ("0", 0.0)])
def test_flush_timeout_from_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: float
) -> None:
    monkeypatch.setenv("OBSERVABILITY_FLUSH_TIMEOUT_MS", raw)
    assert observability.container().refresh_settings().flush_timeout_ms == expected


@pytest.mark.parametrize("raw", ["junk", "-5", "nan"])
def test_invalid_flush_timeout_fails_loudly_at_cold_start(
    monkeypatch: pytest.MonkeyPatch, recorded: Calls, raw: str
) -> None:
    monkeypatch.setenv("OBSERVABILITY_FLUSH_TIMEOUT_MS", raw)
    observability.reset()
    try:
        with pytest.raises(tracing.TracingConfigError, match="OBSERVABILITY_FLUSH_TIMEOUT_MS"):
            respond()(api_event(), Context())
    finally:
        monkeypatch.delenv("OBSERVABILITY_FLUSH_TIMEOUT_MS")
        observability.reset()


def test_metric_recording_failure_does_not_fail_the_request(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("bad labels")

    monkeypatch.setattr(metrics.HTTP_REQUESTS_TOTAL, "inc", broken)
    assert respond()(api_event(), Context())["statusCode"] == 201


def test_task_logs_carry_payment_and_merchant(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    @instrument("risk-service")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        logger.info("scored")
        return {}

    event, trace_id, _ = task_event()
    handler(event, Context())
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["payment_no"] == "PAY1" and line["merchant_id"] == "M1"
    assert line["trace_id"] == trace_id
