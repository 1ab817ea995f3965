"""SPEC §6 end to end: payments over HTTP through the local stack (API emulator, Step
Functions with the real ASL, in-process Lambdas, Stripe simulator), spans exported with the
real OTLP/HTTP protobuf exporter (gzip) to a receiver on a loopback port.

Locally every function runs in this one process, so every span carries the resource
`service.name` of the first `tracing.setup()`; the services are told apart by the span each
Lambda's `instrument()` opens, a SERVER span named after its service ("risk-service", ...),
and for the two HTTP functions by their route spans.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from local.stack import StackHandle, start_stack
from local.trace_view import load_spans, render_tree
from payments import idempotency, services
from payments.auth import sign
from payments.channel import reset_channels
from payments.observability import tracing
from tests.e2e.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

KEY, SECRET, MERCHANT = "mk_demo", "sk_demo_secret", "merch_demo"
EMAIL = "jane.doe.tracing@example.com"
PAY_ROUTE = "POST /api/v1/payments"
REFUND_ROUTE = "POST /api/v1/payments/{payment_no}/refunds"
STRIPE_CHARGE = "stripe: POST /v1/payment_intents"
TRACING_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "TRACES_EXPORTER_FILE",
    "TRACES_EXPORTER_XRAY",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "JAEGER_SAMPLING_RATE",
    "OBSERVABILITY_FLUSH_TIMEOUT_MS",
)

Span = dict[str, Any]


@dataclass
class Reply:
    status: int
    headers: requests.structures.CaseInsensitiveDict[str]
    body: dict[str, Any]
    signature: str

    @property
    def trace_id(self) -> str:
        return str(self.headers["X-Trace-ID"])


@dataclass
class Traced:
    stack: StackHandle
    receiver: OtlpReceiver
    jsonl: Path

    def request(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> Reply:
        raw = json.dumps(body).encode()
        ts = str(int(time.time()))
        signature = sign(SECRET, ts, method, path, raw)
        response = requests.request(
            method,
            self.stack.api_url + path,
            data=raw,
            headers={
                "Content-Type": "application/json",
                "X-API-Key": KEY,
                "X-Timestamp": ts,
                "X-Signature": signature,
                "Idempotency-Key": uuid.uuid4().hex,
                **(headers or {}),
            },
            timeout=30,
        )
        return Reply(response.status_code, response.headers, response.json(), signature)

    def pay(self, headers: dict[str, str] | None = None, **overrides: Any) -> Reply:
        body: dict[str, Any] = {
            "merchant_order_no": f"trace-{uuid.uuid4().hex[:12]}",
            "amount": 1999,
            "currency": "USD",
            "payment_method": "pm_card_visa",
            "customer": {"id": f"cus_{uuid.uuid4().hex[:8]}", "email": EMAIL, "country": "US"},
        }
        body.update(overrides)
        return self.request("POST", "/api/v1/payments", body, headers)

    def refund(self, payment_no: str, amount: int, headers: dict[str, str] | None = None) -> Reply:
        path = f"/api/v1/payments/{payment_no}/refunds"
        return self.request("POST", path, {"amount": amount, "reason": "tracing"}, headers)

    def fault(self, mode: str) -> None:
        assert self.stack.sim_url
        requests.post(
            f"{self.stack.sim_url}/_sim/fault", json={"mode": mode}, timeout=5
        ).raise_for_status()

    def trace(self, trace_id: str, *names: str, timeout: float = 15.0) -> list[Span]:
        """The spans of `trace_id` once every span named in `names` has arrived."""

        def complete(spans: list[Span]) -> bool:
            got = {s["name"] for s in spans if s["trace_id"] == trace_id}
            return set(names) <= got

        self.receiver.wait_for(complete, timeout)
        spans = self.receiver.spans(trace_id)
        missing = set(names) - {s["name"] for s in spans}
        assert not missing, f"spans never exported: {missing}; got {[s['name'] for s in spans]}"
        return spans

    def barrier(self) -> None:
        """A sampled payment whose spans have arrived: earlier exports are in too."""
        reply = self.pay()
        assert reply.status == 201, reply.body
        self.trace(reply.trace_id, PAY_ROUTE, STRIPE_CHARGE)


def _reset_layer_caches() -> None:
    services.reset()
    reset_channels()
    # Not covered by services.reset(): the idempotency persistence layer keeps the boto3
    # client (and endpoint) of the first emulator this process used.
    idempotency._idempotent_runner.cache_clear()


def _configure() -> None:
    """(Re)point this process's tracing at what os.environ now says."""
    tracing.reset_for_tests()
    tracing.setup("payment-gateway")


@contextmanager
def _tracing_env(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    _configure()
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        _configure()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    saved = {name: os.environ.get(name) for name in TRACING_ENV}
    receiver = OtlpReceiver.start()
    jsonl = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    stack: StackHandle | None = None
    try:
        exporting = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "TRACES_EXPORTER_FILE": str(jsonl),
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_TRACES_SAMPLER_ARG": "",
            "OBSERVABILITY_FLUSH_TIMEOUT_MS": "5000",
        }
        for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "JAEGER_SAMPLING_RATE"):
            os.environ.pop(name, None)
        os.environ.update(exporting)  # local.stack reads the OTLP endpoint from os.environ
        stack = start_stack(
            env_overrides={
                **exporting,
                "STRIPE_MAX_RETRIES": "1",
                "STRIPE_READ_TIMEOUT_SECONDS": "2",
                "BREAKER_FAILURE_THRESHOLD": "50",
                "TRACES_EXPORTER_XRAY": "false",
            }
        )
        _reset_layer_caches()
        # Tracing is set up once per process; an earlier test may have done it already.
        _configure()
        yield Traced(stack, receiver, jsonl)
    finally:
        if stack is not None:
            stack.stop()
        tracing.reset_for_tests()
        receiver.stop()
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        _reset_layer_caches()


def _one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s['name'] for s in spans]}"
    return found[0]


def _child(spans: list[Span], parent: Span, name: str) -> Span:
    found = [s for s in spans if s["name"] == name and s["parent_span_id"] == parent["span_id"]]
    assert len(found) == 1, f"{name!r} under {parent['name']!r}: {len(found)} spans"
    return found[0]


def _traceparent(trace_id: str, parent_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{parent_id}-{'01' if sampled else '00'}"


def _new_trace_id() -> str:
    # X-Ray compatible (epoch seconds first), as the platform's own ids are.
    return f"{int(time.time()):08x}{uuid.uuid4().hex[:24]}"


# --------------------------------------------------------------------------- tests


def test_successful_payment_exports_the_spec_tree_in_one_trace(traced: Traced) -> None:
    reply = traced.pay()
    assert reply.status == 201, reply.body
    trace_id = reply.trace_id
    assert reply.body["trace_id"] == trace_id
    spans = traced.trace(
        trace_id,
        PAY_ROUTE,
        "RiskCheck",
        "risk-service",
        "CreateOrder",
        "order-service",
        "ChannelPayment",
        "channel-adapter",
        STRIPE_CHARGE,
        "MarkOrderPaid",
    )
    assert {s["trace_id"] for s in spans} == {trace_id}
    assert "gzip" in traced.receiver.encodings  # OTEL_EXPORTER_OTLP_COMPRESSION honoured

    gateway = _one(spans, PAY_ROUTE)
    assert gateway["kind"] == "SERVER"
    assert gateway["parent_span_id"] is None  # no incoming context: a new trace
    assert gateway["attributes"]["http.response.status_code"] == 201
    assert gateway["attributes"]["http.route"] == "/api/v1/payments"
    assert gateway["status"]["code"] == "UNSET"

    risk_step = _child(spans, gateway, "RiskCheck")
    assert risk_step["kind"] == "INTERNAL"
    attrs = risk_step["attributes"]
    assert attrs["merchant_id"] == MERCHANT
    assert attrs["amount"] == 1999
    assert attrs["currency"] == "USD"
    assert attrs["risk.decision"] == "approve"
    assert isinstance(attrs["risk.score"], int | float)
    assert _child(spans, risk_step, "risk-service")["kind"] == "SERVER"

    order_step = _child(spans, gateway, "CreateOrder")
    assert order_step["attributes"]["payment_no"] == reply.body["payment_no"]
    assert order_step["attributes"]["order_no"] == reply.body["order_no"]
    _child(spans, order_step, "order-service")

    channel_step = _child(spans, gateway, "ChannelPayment")
    assert channel_step["attributes"]["channel.outcome"] == "succeeded"
    adapter = _child(spans, channel_step, "channel-adapter")
    stripe = _child(spans, adapter, STRIPE_CHARGE)
    assert stripe["kind"] == "CLIENT"
    assert stripe["attributes"]["http.response.status_code"] == 200
    assert stripe["attributes"]["peer.service"] == "stripe"

    # Every span of the payment hangs off the gateway's server span.
    by_id = {s["span_id"]: s for s in spans}
    for span in spans:
        node = span
        while node["parent_span_id"] is not None:
            node = by_id[node["parent_span_id"]]
        assert node is gateway, f"{span['name']} is not under the gateway span"
    # Children start after their parents: the steps in workflow order.
    steps = sorted((risk_step, order_step, channel_step), key=lambda s: s["start_time_unix_nano"])
    assert [s["name"] for s in steps] == ["RiskCheck", "CreateOrder", "ChannelPayment"]

    # The JSON-lines exporter wrote the same trace; payctl trace renders it.
    tree = _render_when_flushed(
        traced.jsonl, trace_id, PAY_ROUTE, "RiskCheck", "risk-service", STRIPE_CHARGE
    )
    # (The root's service is the resource of this process's first setup: any earlier test.)
    assert f": {PAY_ROUTE}  " in tree.splitlines()[1]
    assert "risk-service: RiskCheck" in tree
    assert "risk-service: risk-service" in tree
    assert "channel-adapter: stripe: POST /v1/payment_intents" in tree
    assert "risk.decision=approve" in tree


def _render_when_flushed(path: Path, trace_id: str, *names: str) -> str:
    """The tree once every span named is in the file (each process exports on its own)."""
    deadline = time.monotonic() + 10
    while True:
        spans = load_spans(path) if path.exists() else []
        found = {s["name"] for s in spans if s["trace_id"] == trace_id}
        if found.issuperset(names):
            return render_tree(spans, trace_id)
        assert time.monotonic() < deadline, f"{set(names) - found} of {trace_id} not in {path}"
        time.sleep(0.05)


def test_incoming_traceparent_is_continued_through_payment_and_refund(traced: Traced) -> None:
    trace_id, caller = _new_trace_id(), uuid.uuid4().hex[:16]
    reply = traced.pay(headers={"traceparent": _traceparent(trace_id, caller)})
    assert reply.status == 201, reply.body
    assert reply.trace_id == trace_id
    spans = traced.trace(trace_id, PAY_ROUTE, "risk-service", "order-service", STRIPE_CHARGE)
    gateway = _one(spans, PAY_ROUTE)
    assert gateway["parent_span_id"] == caller

    # The caller continues the same trace for the refund, as a child of the payment request.
    refund = traced.refund(
        reply.body["payment_no"],
        500,
        headers={"traceparent": _traceparent(trace_id, gateway["span_id"])},
    )
    assert refund.status == 201, refund.body
    assert refund.trace_id == trace_id
    spans = traced.trace(trace_id, REFUND_ROUTE)
    refund_span = _one(spans, REFUND_ROUTE)
    assert refund_span["kind"] == "SERVER"
    assert refund_span["parent_span_id"] == gateway["span_id"]
    refund_calls = [s for s in spans if s["parent_span_id"] == refund_span["span_id"]]
    assert [s["name"] for s in refund_calls] == ["stripe: POST /v1/refunds"]
    assert refund_calls[0]["kind"] == "CLIENT"

    # All five services' spans in the one trace.
    names = {s["name"] for s in spans}
    assert {PAY_ROUTE, "risk-service", "order-service", "channel-adapter", REFUND_ROUTE} <= names


def test_traceparent_is_injected_into_the_stripe_call(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[Mapping[str, str]] = []  # the headers of each charge the client sent
    real_urlopen = urllib3.PoolManager.urlopen

    def spy(pool: urllib3.PoolManager, method: str, url: str, *args: Any, **kw: Any) -> Any:
        # Charges only: a webhook hint may also read the intent back (GET).
        if method == "POST" and url.startswith(f"{traced.stack.sim_url}/v1/"):
            sent.append(kw.get("headers") or {})
        return real_urlopen(pool, method, url, *args, **kw)

    monkeypatch.setattr(urllib3.PoolManager, "urlopen", spy)
    reply = traced.pay()
    monkeypatch.undo()
    assert reply.status == 201, reply.body
    stripe = _one(traced.trace(reply.trace_id, PAY_ROUTE, STRIPE_CHARGE), STRIPE_CHARGE)
    assert len(sent) == 1
    assert sent[0]["traceparent"] == _traceparent(reply.trace_id, stripe["span_id"])


def test_x_amzn_trace_id_is_continued(traced: Traced) -> None:
    epoch, rest, parent = f"{int(time.time()):08x}", uuid.uuid4().hex[:24], uuid.uuid4().hex[:16]
    header = f"Root=1-{epoch}-{rest};Parent={parent};Sampled=1"
    reply = traced.pay(headers={"X-Amzn-Trace-Id": header})
    assert reply.status == 201, reply.body
    assert reply.trace_id == epoch + rest
    gateway = _one(traced.trace(epoch + rest, PAY_ROUTE), PAY_ROUTE)
    assert gateway["parent_span_id"] == parent


def test_declined_payment_is_visible_in_the_trace(traced: Traced) -> None:
    reply = traced.pay(payment_method="pm_card_chargeDeclined")
    assert reply.status == 402, reply.body
    spans = traced.trace(reply.trace_id, PAY_ROUTE, STRIPE_CHARGE, "CancelOrder")
    gateway = _one(spans, PAY_ROUTE)
    assert gateway["attributes"]["http.response.status_code"] == 402
    channel_step = _child(spans, gateway, "ChannelPayment")
    assert channel_step["attributes"]["channel.outcome"] == "declined"
    stripe = _one(spans, STRIPE_CHARGE)
    assert stripe["attributes"]["http.response.status_code"] == 402
    assert stripe["attributes"]["payment.decline_code"] == "generic_decline"
    # The compensation ran in the same trace.
    _child(spans, _child(spans, gateway, "CancelOrder"), "order-service")
    # Where ERROR stands for a decline: see test_declined_payment_error_status.


def test_declined_payment_error_status(traced: Traced) -> None:
    reply = traced.pay(payment_method="pm_card_chargeDeclined")
    assert reply.status == 402, reply.body
    spans = traced.trace(reply.trace_id, PAY_ROUTE, STRIPE_CHARGE, "CancelOrder")
    # HTTP semantic conventions: a CLIENT span with a 4xx response SHOULD be ERROR.
    assert _one(spans, STRIPE_CHARGE)["status"]["code"] == "ERROR"
    # The failed business step is visible in the trace map too.
    step = _one(spans, "ChannelPayment")
    assert step["status"]["code"] == "ERROR" and step["status"]["description"].startswith(
        "declined"
    )


def test_channel_failure_marks_the_spans_error(traced: Traced) -> None:
    traced.fault("rate_limit")  # 429 on every attempt: unavailable, provably not charged
    try:
        reply = traced.pay()
    finally:
        traced.fault("none")
    assert reply.status == 503, reply.body
    spans = traced.trace(reply.trace_id, PAY_ROUTE, "ChannelPayment", "channel-adapter")
    gateway = _one(spans, PAY_ROUTE)
    assert gateway["status"]["code"] == "ERROR"
    assert gateway["attributes"]["http.response.status_code"] == 503
    channel_step = _child(spans, gateway, "ChannelPayment")
    adapter = _child(spans, channel_step, "channel-adapter")
    # An unavailable provider is a result of the task, not a crash: the step says why.
    assert channel_step["status"]["code"] == "ERROR"
    assert "unavailable" in channel_step["status"].get("description", "")
    assert channel_step["attributes"]["channel.outcome"] == "unavailable"
    attempts = [s for s in spans if s["name"] == STRIPE_CHARGE]
    assert attempts and all(s["status"]["code"] == "ERROR" for s in attempts)
    assert all(s["parent_span_id"] == adapter["span_id"] for s in attempts)
    # The order was cancelled in the same trace.
    _child(spans, gateway, "CancelOrder")


def test_sampled_out_traceparent_exports_nothing(traced: Traced) -> None:
    trace_id = _new_trace_id()
    reply = traced.pay(headers={"traceparent": _traceparent(trace_id, "00f067aa0ba902b7", False)})
    assert reply.status == 201, reply.body
    assert reply.trace_id == trace_id  # the id is still reported to the caller
    traced.barrier()
    assert traced.receiver.spans(trace_id) == []


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_SAMPLER": "always_off"},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
        {"OTEL_TRACES_SAMPLER": "", "JAEGER_SAMPLING_RATE": "0"},
    ],
    ids=["always_off", "ratio_0", "jaeger_0"],
)
def test_sampler_off_exports_nothing(traced: Traced, env: dict[str, str]) -> None:
    with _tracing_env(**env):
        reply = traced.pay()
        assert reply.status == 201, reply.body
    traced.barrier()
    assert traced.receiver.spans(reply.trace_id) == []


def test_exported_spans_carry_no_secrets(traced: Traced) -> None:
    traced.receiver.clear()
    paid = traced.pay()
    assert paid.status == 201, paid.body
    refund = traced.refund(paid.body["payment_no"], 100)
    assert refund.status == 201, refund.body
    declined = traced.pay(payment_method="pm_card_chargeDeclined")
    assert declined.status == 402, declined.body
    traced.trace(paid.trace_id, PAY_ROUTE, STRIPE_CHARGE)
    traced.trace(refund.trace_id, REFUND_ROUTE)
    traced.trace(declined.trace_id, PAY_ROUTE, STRIPE_CHARGE)

    forbidden = {
        "merchant secret": SECRET,
        "payment signature": paid.signature,
        "refund signature": refund.signature,
        "card token": "pm_card_visa",
        "declined card token": "pm_card_chargeDeclined",
        "email": EMAIL,
        "email local part": "jane.doe.tracing",
        "stripe key": "sk_test_local",
    }
    wire = b"".join(traced.receiver.raw_bodies)  # decoded OTLP payloads
    assert wire
    leaks = {what for what, value in forbidden.items() if value.encode() in wire}
    assert not leaks, f"exported spans contain: {sorted(leaks)}"
    text = json.dumps(traced.receiver.spans())
    assert not {what for what, value in forbidden.items() if value in text}
