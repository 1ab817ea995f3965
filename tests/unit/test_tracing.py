"""Tracing setup: provider, ids, propagation, sampling, exporters and bounded flush."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from payments import observability
from payments.observability import exporters, provider, tracing

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
    "XRAY_OTLP_ENDPOINT",
    "_X_AMZN_TRACE_ID",
)

Configure = Callable[..., InMemorySpanExporter]


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """Reconfigure tracing with the given environment and an in-memory exporter."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)

    def _configure(**env: str) -> InMemorySpanExporter:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        tracing.reset_for_tests()
        exporter = InMemorySpanExporter()
        tracing.setup("test-service", exporters=[exporter])
        return exporter

    yield _configure
    tracing.reset_for_tests()


def finished(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    tracing.flush(2.0)
    return exporter.get_finished_spans()


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


# --------------------------------------------------------------------------- provider


def test_setup_installs_the_global_provider_used_by_business_tracers(configure: Configure) -> None:
    exporter = configure()
    assert trace.get_tracer_provider() is observability.container().provider
    # business code and the Stripe client use the global provider directly
    with trace.get_tracer("payments.channel").start_as_current_span("stripe: POST"):
        pass
    (span,) = finished(exporter)
    assert span.name == "stripe: POST"
    assert span.resource.attributes["service.name"]


def test_setup_is_once_per_environment(configure: Configure) -> None:
    exporter = configure()
    other = InMemorySpanExporter()
    tracing.setup("another", exporters=[other])  # already configured: no-op
    with tracing.get_tracer().start_as_current_span("x"):
        pass
    assert len(finished(exporter)) == 1
    assert other.get_finished_spans() == ()


def test_new_traces_have_xray_compatible_ids(configure: Configure) -> None:
    exporter = configure()
    before = int(time.time())
    with tracing.get_tracer().start_as_current_span("root"):
        trace_id = tracing.current_trace_id()
    after = int(time.time())
    (span,) = finished(exporter)
    assert hex_trace(span) == trace_id
    assert len(trace_id) == 32
    assert before <= int(trace_id[:8], 16) <= after


def test_current_trace_id_is_empty_outside_a_span() -> None:
    assert tracing.current_trace_id() == ""


# --------------------------------------------------------------------------- propagation


def test_extract_traceparent_in_any_case(configure: Configure) -> None:
    configure()
    ctx = tracing.extract_context({"TraceParent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    span_context = trace.get_current_span(ctx).get_span_context()
    assert format(span_context.trace_id, "032x") == TRACE_ID
    assert format(span_context.span_id, "016x") == PARENT_ID
    assert span_context.is_remote and span_context.trace_flags.sampled


@pytest.mark.parametrize("header", ["X-Amzn-Trace-Id", "x-amzn-trace-id"])
def test_extract_xray_header(configure: Configure, header: str) -> None:
    exporter = configure()
    ctx = tracing.extract_context({header: XRAY_HEADER})
    with tracing.get_tracer().start_as_current_span("child", context=ctx):
        pass
    (span,) = finished(exporter)
    assert hex_trace(span) == "5759e988bd862e3fe1be46a994272793"
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "53995c3f42cd8ad8"


def test_w3c_wins_over_an_xray_root_added_by_api_gateway(configure: Configure) -> None:
    configure()
    ctx = tracing.extract_context(
        {
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
            "x-amzn-trace-id": "Root=1-5759e988-bd862e3fe1be46a994272793",
        }
    )
    assert format(trace.get_current_span(ctx).get_span_context().trace_id, "032x") == TRACE_ID


@pytest.mark.parametrize("carrier", [None, {}, {"traceparent": "garbage"}])
def test_extract_without_a_valid_parent_gives_an_empty_context(
    configure: Configure, carrier: dict[str, str] | None
) -> None:
    configure()
    ctx = tracing.extract_context(carrier)
    assert not trace.get_current_span(ctx).get_span_context().is_valid


def test_inject_round_trips_through_a_carrier(configure: Configure) -> None:
    exporter = configure()
    with tracing.get_tracer().start_as_current_span("producer"):
        carrier = tracing.inject_context()
    assert carrier["traceparent"].startswith("00-")
    assert carrier["X-Amzn-Trace-Id"].startswith("Root=1-")
    with tracing.get_tracer().start_as_current_span(
        "consumer", context=tracing.extract_context(carrier)
    ):
        pass
    producer, consumer = finished(exporter)
    assert hex_trace(producer) == hex_trace(consumer)
    assert consumer.parent is not None and producer.context is not None
    assert consumer.parent.span_id == producer.context.span_id


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "env",
    [
        {"JAEGER_SAMPLING_RATE": "0"},
        {"OTEL_TRACES_SAMPLER": "always_off"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
        {"OTEL_TRACES_SAMPLER": "parentbased_always_off"},
    ],
)
def test_sampling_off_exports_nothing(configure: Configure, env: dict[str, str]) -> None:
    exporter = configure(**env)
    tracer = tracing.get_tracer()
    with tracer.start_as_current_span("root"), tracer.start_as_current_span("child"):
        pass
    assert finished(exporter) == ()


@pytest.mark.parametrize(
    "env",
    [{}, {"JAEGER_SAMPLING_RATE": "100"}, {"OTEL_TRACES_SAMPLER": "ALWAYS_ON"}],
)
def test_sampling_on_exports_everything(configure: Configure, env: dict[str, str]) -> None:
    exporter = configure(**env)
    tracer = tracing.get_tracer()
    with tracer.start_as_current_span("root"), tracer.start_as_current_span("child"):
        pass
    assert [span.name for span in finished(exporter)] == ["child", "root"]


@pytest.mark.parametrize(
    ("env", "flags", "exported"),
    [
        ({}, "01", True),
        ({}, "00", False),
        ({"JAEGER_SAMPLING_RATE": "0"}, "01", True),  # parent-based: the caller decided
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"},
            "00",
            False,
        ),
    ],
)
def test_parent_based_sampling_follows_the_sampled_flag(
    configure: Configure, env: dict[str, str], flags: str, exported: bool
) -> None:
    exporter = configure(**env)
    ctx = tracing.extract_context({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{flags}"})
    with tracing.get_tracer().start_as_current_span("server", context=ctx):
        assert tracing.current_trace_id() == TRACE_ID  # correlation even when not sampled
    assert bool(finished(exporter)) is exported


def test_legacy_rate_is_a_parent_based_ratio() -> None:
    sampler = provider.named_sampler("parentbased_traceidratio", 0.25)
    assert "0.25" in sampler.get_description()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JAEGER_SAMPLING_RATE": "abc"}, "JAEGER_SAMPLING_RATE"),
        ({"JAEGER_SAMPLING_RATE": "150"}, "JAEGER_SAMPLING_RATE"),
        ({"JAEGER_SAMPLING_RATE": "-1"}, "JAEGER_SAMPLING_RATE"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, "SAMPLER_ARG"),
    ],
)
def test_invalid_sampling_configuration_fails_at_setup(
    monkeypatch: pytest.MonkeyPatch, configure: Configure, env: dict[str, str], message: str
) -> None:
    with pytest.raises(tracing.TracingConfigError, match=message):
        configure(**env)
    assert not observability.container().tracing_configured


# --------------------------------------------------------------------------- exporters


def test_no_exporter_configured_by_default(configure: Configure) -> None:
    configure()
    assert tracing.exporters_from_env() == []


def test_otlp_exporter_from_standard_variables(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    (exporter,) = tracing.exporters_from_env()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/v1/traces")
    (exporter,) = tracing.exporters_from_env()
    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == "http://tempo:4318/v1/traces"


def test_xray_exporter_signs_with_sigv4(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure()
    monkeypatch.setenv("TRACES_EXPORTER_XRAY", "true")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session")
    (exporter,) = tracing.exporters_from_env()
    assert exporter._endpoint == "https://xray.eu-west-1.amazonaws.com/v1/traces"  # type: ignore[attr-defined]

    import requests

    session = exporters.sigv4_session("eu-west-1")
    assert session.auth is not None
    prepared = requests.Request(
        "POST",
        "https://xray.eu-west-1.amazonaws.com/v1/traces",
        data=b"\x0a\x00",
        headers={"Content-Type": "application/x-protobuf"},
    ).prepare()
    signed = session.auth(prepared)  # type: ignore[operator]
    authorization = signed.headers["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/xray/aws4_request" in authorization
    assert signed.headers["X-Amz-Security-Token"] == "session"


def test_xray_exporter_needs_a_region(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure()
    monkeypatch.setenv("TRACES_EXPORTER_XRAY", "1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(tracing.TracingConfigError, match="AWS_REGION"):
        tracing.exporters_from_env()
    monkeypatch.setenv("XRAY_OTLP_ENDPOINT", "https://xray.example/v1/traces")
    (exporter,) = tracing.exporters_from_env()
    assert exporter._endpoint == "https://xray.example/v1/traces"  # type: ignore[attr-defined]


def test_json_lines_file_exporter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    path = f"{tmp_path}/spans.jsonl"
    monkeypatch.setenv("TRACES_EXPORTER_FILE", path)
    tracing.reset_for_tests()
    try:
        tracing.setup("file-service")
        tracer = tracing.get_tracer()
        with (
            tracer.start_as_current_span("parent"),
            tracer.start_as_current_span("child", attributes={"payment_no": "P1"}) as span,
        ):
            span.add_event("retry", {"attempt": 2})
            span.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
        tracing.flush(2.0)
    finally:
        tracing.reset_for_tests()
    with open(path, encoding="utf-8") as handle:
        child, parent = (json.loads(line) for line in handle)
    assert child["name"] == "child" and parent["name"] == "parent"
    assert child["trace_id"] == parent["trace_id"] and len(child["trace_id"]) == 32
    assert child["parent_span_id"] == parent["span_id"]
    assert parent["parent_span_id"] is None
    assert child["kind"] == "INTERNAL"
    assert child["service"]
    assert child["start_time_unix_nano"] <= child["end_time_unix_nano"]
    assert child["status"] == {"code": "ERROR", "description": "boom"}
    assert child["attributes"] == {"payment_no": "P1"}
    assert child["events"][0]["name"] == "retry"
    assert child["events"][0]["attributes"] == {"attempt": 2}


def test_json_lines_exporter_reports_io_failure(tmp_path: pytest.TempPathFactory) -> None:
    exporter = tracing.JsonLinesSpanExporter(f"{tmp_path}/missing/dir/spans.jsonl")
    span = _a_finished_span()
    assert exporter.export([span]) is SpanExportResult.FAILURE
    assert exporter.force_flush() is True
    exporter.shutdown()


def _a_finished_span() -> ReadableSpan:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("s") as span:
        pass
    assert isinstance(span, ReadableSpan)
    return span


# --------------------------------------------------------------------------- annotate_step


def test_annotate_step_outside_a_step_uses_the_current_span(configure: Configure) -> None:
    exporter = configure()
    with tracing.get_tracer().start_as_current_span("work"):
        attributes: dict[str, str | int] = {
            "risk.score": 12,
            "api_key": "k",
            "note": "sk_test_abc123",
        }
        tracing.annotate_step(**attributes)
    (span,) = finished(exporter)
    assert span.attributes is not None
    assert span.attributes["risk.score"] == 12
    assert span.attributes["api_key"] == "[REDACTED]"
    assert span.attributes["note"] == "[REDACTED]"


def test_annotate_step_targets_the_step_span(configure: Configure) -> None:
    exporter = configure()
    tracer = tracing.get_tracer()
    with (
        tracer.start_as_current_span("RiskCheck") as step,
        tracing.step_span(step),
        tracer.start_as_current_span("risk-service"),
    ):
        tracing.annotate_step(**{"risk.decision": "approve"})
    inner, outer = finished(exporter)
    assert outer.attributes is not None and inner.attributes is not None
    assert outer.attributes["risk.decision"] == "approve"
    assert "risk.decision" not in inner.attributes


# --------------------------------------------------------------------------- flush


class HangingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.release.wait(10)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_flush_is_bounded_when_the_exporter_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    hanging = HangingExporter()
    tracing.reset_for_tests()
    try:
        tracing.setup("hang", exporters=[hanging])
        elapsed = []
        # The second flush finds the first one still stuck; its budget is long, so a wait
        # would show whatever the machine's load.
        for attempt, budget in enumerate((0.2, 5.0)):
            with tracing.get_tracer().start_as_current_span(f"s{attempt}"):
                pass
            started = time.monotonic()
            tracing.flush(budget)
            elapsed.append(time.monotonic() - started)
        assert 0.15 <= elapsed[0] < 3.0, elapsed  # waited for the hung export, up to the bound
        assert elapsed[1] < 2.5, elapsed  # and does not wait again while it is stuck
        assert hanging.calls == 1
    finally:
        hanging.release.set()
        tracing.reset_for_tests()


def test_flush_with_nothing_ended_exports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    hanging = HangingExporter()
    tracing.reset_for_tests()
    try:
        tracing.setup("idle", exporters=[hanging])
        started = time.monotonic()
        tracing.flush(0.2)  # no span ended (e.g. a sampled-out request): no export, no wait
        assert time.monotonic() - started < 0.05
        assert hanging.calls == 0
    finally:
        hanging.release.set()
        tracing.reset_for_tests()


class ExplodingExporter(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        raise RuntimeError("exporter exploded")

    def shutdown(self) -> None:
        return None


def test_flush_never_raises(monkeypatch: pytest.MonkeyPatch, configure: Configure) -> None:
    configure()
    exploding = ExplodingExporter()
    tracing.reset_for_tests()
    tracing.setup("boom", exporters=[exploding])
    with tracing.get_tracer().start_as_current_span("s"):
        pass
    tracing.flush(10.0)  # the export fails at once: the budget only bounds a loaded machine
    assert exploding.calls == 1
    (queue,) = observability.container().processor.queues
    assert len(queue) == 1  # kept for the next flush, not lost
    observability.reset()  # the next test gets fresh lanes
    import threading as threading_module

    monkeypatch.setattr(threading_module, "Thread", None)  # even thread creation failing
    tracing.flush(0.1)


def test_flush_without_exporters_returns_at_once(configure: Configure) -> None:
    tracing.reset_for_tests()
    started = time.monotonic()
    tracing.flush(5.0)
    assert time.monotonic() - started < 0.1
