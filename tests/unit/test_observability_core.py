"""Unsampled spans cost nothing, tracers are cached, settings validate, the container resets,
and `instance` slots are leased (bounded Prometheus series)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from payments import observability
from payments.observability import metrics, redaction, remote_write, tracing
from payments.observability.series_pool import (
    DynamoDbSlotLeases,
    InMemorySlotLeases,
    InstanceSlot,
)
from payments.observability.settings import ObservabilitySettings, SettingsError

# The package exports the function `instrument`; the module behind it:
instrument_module = importlib.import_module("payments.observability.instrument")


class Ctx:
    function_name = "fn"
    aws_request_id = "req"


def api_event() -> dict[str, Any]:
    return {
        "routeKey": "POST /api/v1/payments",
        "rawPath": "/api/v1/payments",
        "headers": {},
        "requestContext": {"http": {"method": "POST", "path": "/api/v1/payments"}},
        "body": '{"payment_method": "pm_card_visa"}',
    }


def task_event() -> dict[str, Any]:
    payment = {"merchant_id": "jane@example.com", "amount": 1, "currency": "USD"}
    return {"step": "RiskCheck", "trace_context": {}, "payment": payment}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "JAEGER_SAMPLING_RATE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)
    observability.reset()
    yield monkeypatch
    observability.reset()


def count_redactions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = redaction.redact_attributes

    def spy(attributes: Any) -> dict[str, Any]:
        calls.append("attributes")
        return original(attributes)

    original_text = redaction.redact_text

    def spy_text(text: str) -> str:
        calls.append("text")
        return original_text(text)

    for module in (instrument_module, tracing):
        monkeypatch.setattr(module, "redact_attributes", spy)
    monkeypatch.setattr(instrument_module, "redact_text", spy_text)
    monkeypatch.setattr(redaction, "redact_text", spy_text)
    return calls


def handlers() -> tuple[Any, Any]:
    @observability.instrument("gateway")
    def api(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 201, "body": "{}"}

    @observability.instrument("risk")
    def task(event: dict[str, Any], context: Any) -> dict[str, Any]:
        tracing.annotate_step(note="a card 4242424242424242")
        raise RuntimeError("declined for jane@example.com")

    return api, task


@pytest.mark.parametrize(("sampler", "expected"), [("always_off", 0), ("always_on", 1)])
def test_unsampled_path_builds_no_attributes_and_redacts_nothing(
    env: pytest.MonkeyPatch, sampler: str, expected: int
) -> None:
    env.setenv("OTEL_TRACES_SAMPLER", sampler)
    exporter = InMemorySpanExporter()
    tracing.setup("svc", exporters=[exporter])
    calls = count_redactions(env)
    built: list[str] = []
    original = instrument_module._PAYMENT_ATTRIBUTES

    class Watched(tuple[str, ...]):
        def __iter__(self) -> Iterator[str]:
            built.append("step attributes")
            return super().__iter__()

    env.setattr(instrument_module, "_PAYMENT_ATTRIBUTES", Watched(original))
    api, task = handlers()
    assert api(api_event(), Ctx())["statusCode"] == 201
    with pytest.raises(RuntimeError):
        task(task_event(), Ctx())
    assert bool(calls) is bool(expected)  # the sampled run proves the spies are wired
    assert bool(built) is bool(expected)
    assert bool(exporter.get_finished_spans()) is bool(expected)


def test_unsampled_spans_still_carry_the_trace_id(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracing.setup("svc", exporters=[InMemorySpanExporter()])
    seen: list[str] = []

    @observability.instrument("gateway")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(observability.current_trace_id())
        seen.append(tracing.current_trace_id())
        return {"statusCode": 200, "body": "{}"}

    handler(api_event(), Ctx())
    assert seen[0] == seen[1] and len(seen[0]) == 32


def test_tracers_are_cached_and_the_hot_path_runs_no_warnings_machinery(
    env: pytest.MonkeyPatch,
) -> None:
    import opentelemetry.sdk.trace as sdk_trace

    tracing.setup("svc", exporters=[InMemorySpanExporter()])
    api, _ = handlers()
    api(api_event(), Ctx())  # warm: the layer's tracer and the business tracer exist
    trace.get_tracer("payments.channel.stripe")
    calls: list[Any] = []
    real = sdk_trace.filterwarnings
    env.setattr(sdk_trace, "filterwarnings", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(3):
        api(api_event(), Ctx())
        assert trace.get_tracer("payments.channel.stripe") is trace.get_tracer(
            "payments.channel.stripe"
        )
    assert calls == []


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("OBSERVABILITY_FLUSH_TIMEOUT_MS", "-1"),
        ("OBSERVABILITY_FLUSH_INTERVAL_MS", "soon"),
        ("OBSERVABILITY_SPAN_QUEUE_SIZE", "0"),
        ("OBSERVABILITY_EXTENSION", "maybe"),
        ("PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS", "inf"),
        ("PROMETHEUS_REMOTE_WRITE_SIGV4", "perhaps"),
        ("PROMETHEUS_INSTANCE_SLOTS", "-3"),
        ("TRACES_EXPORTER_XRAY", "2"),
        ("JAEGER_SAMPLING_RATE", "101"),
    ],
)
def test_invalid_settings_name_their_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        ObservabilitySettings.from_environ({variable: raw})


def test_settings_defaults_and_parsing() -> None:
    default = ObservabilitySettings.from_environ({})
    assert (default.flush_timeout_ms, default.flush_interval_ms, default.instance_slots) == (
        200.0,
        1000.0,
        0,
    )
    assert not default.use_extension
    parsed = ObservabilitySettings.from_environ(
        {
            "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
            "OTEL_TRACES_SAMPLER": " ParentBased_TraceIdRatio ",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "PROMETHEUS_REMOTE_WRITE_URL": "https://user:pw@prom/api/v1/write",
            "PROMETHEUS_INSTANCE_SLOTS": "32",
            "PAYMENTS_TABLE": "payments-dev",
        }
    )
    assert parsed.use_extension and parsed.sampler == "parentbased_traceidratio"
    assert parsed.sampler_ratio == 0.1 and parsed.otlp_traces
    assert parsed.instance_slots == 32 and parsed.instance_lease_table == "payments-dev"
    assert "pw" not in repr(parsed)  # the URL may carry credentials
    off = ObservabilitySettings.from_environ(
        {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001", "OBSERVABILITY_EXTENSION": "off"}
    )
    assert not off.use_extension


def test_settings_are_read_once_until_reset(env: pytest.MonkeyPatch) -> None:
    env.setenv("METRICS_NAMESPACE", "First")
    assert observability.container().settings.namespace == "First"
    env.setenv("METRICS_NAMESPACE", "Second")
    assert observability.container().settings.namespace == "First"
    observability.reset()
    assert observability.container().settings.namespace == "Second"


def test_the_container_reset_forgets_the_environment(env: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    tracing.setup("svc", exporters=[exporter])
    api, _ = handlers()
    api(api_event(), Ctx())
    obs = observability.container()
    assert obs.initialised and obs.tracing_configured and not obs.cold_start
    assert metrics.snapshot()["http_requests_total"]
    provider = obs.provider
    observability.reset()
    assert not obs.initialised and not obs.tracing_configured and obs.cold_start
    assert obs.processor.queues == ()
    assert metrics.snapshot()["http_requests_total"] == {}
    assert obs.provider is provider  # the global provider is once per process


def test_services_reset_resets_observability(env: pytest.MonkeyPatch) -> None:
    from payments import services

    observability.container().initialised = True
    services.reset()
    assert not observability.container().initialised


# --------------------------------------------------------------------------- series pool


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_slots_are_leased_lowest_first_and_reused_after_expiry() -> None:
    leases, clock = InMemorySlotLeases(), Clock()
    a = InstanceSlot(leases, "fn", 3, 60, clock=clock)
    b = InstanceSlot(leases, "fn", 3, 60, clock=clock)
    other_function = InstanceSlot(leases, "other", 3, 60, clock=clock)
    assert a.current() == ("0", 1) and b.current() == ("1", 1)
    assert other_function.current() == ("0", 1)  # one pool per function
    clock.now += 45  # past half the lease: renewed, same slot and epoch
    assert a.current() == ("0", 1)
    clock.now += 40  # b never renewed (lapsed at 1060): its slot is free again
    c = InstanceSlot(leases, "fn", 3, 60, clock=clock)
    assert a.current() == ("0", 1)
    assert c.current() == ("1", 1)
    # b thaws after its lease lapsed: it claims again (another slot, a new epoch)
    assert b.current() == ("2", 2)
    d = InstanceSlot(leases, "fn", 3, 60, clock=clock)
    assert d.current() is None  # pool exhausted: no write rather than a shared series
    b.release()
    assert d.current() == ("2", 1)


def test_a_lapsed_lease_taken_over_is_not_renewed() -> None:
    leases, clock = InMemorySlotLeases(), Clock()
    a = InstanceSlot(leases, "fn", 1, 60, clock=clock)
    assert a.current() == ("0", 1)
    clock.now += 61
    b = InstanceSlot(leases, "fn", 1, 60, clock=clock)
    assert b.current() == ("0", 1)
    assert not leases.renew("fn", 0, a.owner, clock.now, 60)
    assert a.current() is None


def test_dynamodb_leases_use_conditional_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="payments",
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        leases = DynamoDbSlotLeases("payments", client)
        assert leases.claim("fn", "a", 2, 1000.0, 60) == 0
        assert leases.claim("fn", "b", 2, 1000.0, 60) == 1
        assert leases.claim("fn", "c", 2, 1000.0, 60) is None
        assert leases.claim("fn", "a", 2, 1001.0, 60) == 0  # already ours
        assert leases.renew("fn", 0, "a", 1030.0, 60)
        assert not leases.renew("fn", 0, "b", 1030.0, 60)
        assert leases.claim("fn", "c", 2, 1070.0, 60) == 1  # b lapsed at 1060
        leases.release("fn", 0, "b")  # not b's: kept
        leases.release("fn", 0, "a")
        assert leases.claim("fn", "d", 2, 1071.0, 60) == 0
        item = client.get_item(
            TableName="payments", Key={"pk": {"S": "OBS#SLOTS#fn"}, "sk": {"S": "SLOT#00000"}}
        )["Item"]
        assert item["owner"]["S"] == "d" and int(item["ttl"]["N"]) > 1071 + 60


def test_a_new_slot_rebases_counters_on_what_was_delivered(env: pytest.MonkeyPatch) -> None:
    """Moving to another slot restarts the series at 0 + only what was not yet delivered."""
    metrics.reset()
    metrics.configure("fn", "svc")
    metrics.PAYMENT_TOTAL.inc(3, status="success", channel="s", currency="USD")
    with metrics._LOCK:
        raw, _ = metrics._raw_series()
        first = metrics._finish(raw, "0", 10_000)
    metrics._delivered(raw, 0, 1)
    metrics.PAYMENT_TOTAL.inc(2, status="success", channel="s", currency="USD")
    with metrics._LOCK:
        raw, _ = metrics._raw_series()
        metrics._state.epoch, metrics._state.baseline = 1, dict(metrics._state.delivered)
        metrics._state.announced = set()
        moved = metrics._finish(raw, "1", 20_000)

    def payment_samples(series: list[remote_write.Series]) -> tuple[Any, ...]:
        (s,) = [s for s in series if ("__name__", "payment_gateway_payment_total") in s.labels]
        return dict(s.labels)["instance"], s.samples

    assert payment_samples(first) == ("0", ((0.0, 9_999), (3.0, 10_000)))
    assert payment_samples(moved) == ("1", ((0.0, 19_999), (2.0, 20_000)))  # 3 not recounted
    metrics.reset()
