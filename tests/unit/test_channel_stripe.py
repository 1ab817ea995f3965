"""StripeClient against the real simulator over loopback HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from werkzeug.wrappers import Request, Response

import payments.channel as channel
from local.stripe_sim import SimServer, StripeSimulator, serve
from payments.channel import ChannelError, breaker_states, get_channel
from payments.channel.breaker import CircuitBreaker
from payments.channel.stripe import StripeClient
from payments.config import get_settings
from payments.errors import ChannelUnavailable, UnsupportedChannel

API_KEY = "sk_test_secret_do_not_leak"


def state(breaker: CircuitBreaker) -> str:
    return breaker.state  # via a call, so mypy does not narrow the Literal


class RecordingSim(StripeSimulator):
    """The simulator, plus a log of what arrived on the wire and a one-shot 429 knob."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.throttle_next = 0
        self._rec_lock = threading.Lock()

    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/v1/"):
            with self._rec_lock:
                self.requests.append(
                    (request.path, dict(request.headers), dict(request.form.items()))
                )
                if self.throttle_next:
                    self.throttle_next -= 1
                    body = '{"error": {"type": "rate_limit_error"}}'
                    return Response(body, 429, {"Retry-After": "1"}, mimetype="application/json")
        return super().dispatch(request)

    def clear(self) -> None:
        self.reset()
        with self._rec_lock:
            self.requests.clear()
            self.throttle_next = 0


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    handle = serve(port=0, app=RecordingSim())
    yield handle
    handle.stop()


@pytest.fixture
def sim(server: SimServer) -> RecordingSim:
    assert isinstance(server.app, RecordingSim)
    server.app.clear()
    return server.app


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(
    server: SimServer,
    exporter: InMemorySpanExporter,
    sleeps: Sleeps,
    **overrides: Any,
) -> StripeClient:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    options: dict[str, Any] = {
        "base_url": server.url,
        "api_key": API_KEY,
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "max_retries": 2,
        "breaker": CircuitBreaker("stripe", failure_threshold=5, reset_seconds=30),
        "sleep": sleeps,
        "tracer_provider": provider,
    }
    options.update(overrides)
    return StripeClient(**options)


@pytest.fixture
def client(server: SimServer, exporter: InMemorySpanExporter, sleeps: Sleeps) -> StripeClient:
    return make_client(server, exporter, sleeps)


def do_charge(client: StripeClient, pm: str = "pm_card_visa", **kw: Any) -> Any:
    args: dict[str, Any] = {
        "payment_no": "pay_1",
        "amount": 1000,
        "currency": "USD",
        "payment_method": pm,
        "idempotency_key": "charge-pay_1",
    }
    args.update(kw)
    return client.charge(**args)


def intents_for(sim: StripeSimulator, payment_no: str) -> list[dict[str, Any]]:
    return [i for i in sim.payment_intents() if i["metadata"].get("payment_no") == payment_no]


# ---- outcomes ---------------------------------------------------------------------------


def test_charge_succeeds_with_stripe_wire_format(client: StripeClient, sim: RecordingSim) -> None:
    result = do_charge(client)
    assert result.outcome == "succeeded"
    assert result.decline_code is None
    [intent] = intents_for(sim, "pay_1")
    assert result.channel_reference == intent["id"]
    assert (intent["amount"], intent["currency"], intent["status"]) == (1000, "usd", "succeeded")
    [(path, headers, form)] = sim.requests
    assert path == "/v1/payment_intents"
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Idempotency-Key"] == "charge-pay_1"
    assert headers["Stripe-Version"]
    assert form["confirm"] == "true" and form["payment_method_types[]"] == "card"


def test_zero_decimal_currency_amount_is_sent_unchanged(
    client: StripeClient, sim: RecordingSim
) -> None:
    do_charge(client, currency="JPY", amount=1234, payment_no="pay_jpy", idempotency_key="j")
    [intent] = intents_for(sim, "pay_jpy")
    assert (intent["amount"], intent["currency"]) == (1234, "jpy")


@pytest.mark.parametrize(
    ("pm", "code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_unknown", "resource_missing"),  # a bad token is the payer's, not ours
    ],
)
def test_declines_are_results_not_errors(
    client: StripeClient, sim: RecordingSim, pm: str, code: str
) -> None:
    result = do_charge(client, pm)
    assert result.outcome == "declined"
    assert result.decline_code == code
    assert state(client.breaker) == "closed"


def test_declined_intent_reference_is_kept(client: StripeClient, sim: RecordingSim) -> None:
    result = do_charge(client, "pm_card_chargeDeclined")
    [intent] = intents_for(sim, "pay_1")
    assert result.channel_reference == intent["id"]


def test_refund_success_partial_and_reason(client: StripeClient, sim: RecordingSim) -> None:
    ref = do_charge(client).channel_reference
    r1 = client.refund(
        charge_reference=ref, amount=400, idempotency_key="refund-1", reason="requested_by_customer"
    )
    r2 = client.refund(
        charge_reference=ref, amount=100, idempotency_key="refund-2", reason="changed mind"
    )
    assert (r1.outcome, r2.outcome) == ("succeeded", "succeeded")
    [intent] = intents_for(sim, "pay_1")
    assert [r["id"] for r in intent["refunds"]] == [r1.channel_reference, r2.channel_reference]
    assert [r["reason"] for r in intent["refunds"]] == ["requested_by_customer", None]
    assert intent["refunds"][1]["metadata"] == {"reason": "changed mind"}
    refund_posts = [h for p, h, _ in sim.requests if p == "/v1/refunds"]
    assert [h["Idempotency-Key"] for h in refund_posts] == ["refund-1", "refund-2"]


def test_refund_declines(client: StripeClient, sim: RecordingSim) -> None:
    ref = do_charge(client, "pm_card_refundFail").channel_reference
    failed = client.refund(charge_reference=ref, amount=100, idempotency_key="r1")
    assert (failed.outcome, failed.decline_code) == ("declined", "declined")
    ok = do_charge(client, payment_no="pay_2", idempotency_key="charge-pay_2").channel_reference
    over = client.refund(charge_reference=ok, amount=5000, idempotency_key="r2")
    assert (over.outcome, over.decline_code) == ("declined", "amount_too_large")


def test_refund_idempotency_key_replays_instead_of_refunding_twice(
    client: StripeClient, sim: RecordingSim
) -> None:
    ref = do_charge(client).channel_reference
    a = client.refund(charge_reference=ref, amount=300, idempotency_key="same")
    b = client.refund(charge_reference=ref, amount=300, idempotency_key="same")
    assert a.channel_reference == b.channel_reference
    assert len(intents_for(sim, "pay_1")[0]["refunds"]) == 1


# ---- retries, timeouts, non-retryable errors ----------------------------------------------


def test_500_then_success_retries_with_same_key_and_charges_once(
    client: StripeClient, sim: RecordingSim, sleeps: Sleeps
) -> None:
    sim.set_fault("error", count=1)
    result = do_charge(client)
    assert result.outcome == "succeeded"
    assert len(intents_for(sim, "pay_1")) == 1
    keys = [h["Idempotency-Key"] for _, h, _ in sim.requests]
    assert keys == ["charge-pay_1", "charge-pay_1"]
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.05


def test_persistent_500_gives_channel_unavailable_after_retries(
    client: StripeClient, sim: RecordingSim, sleeps: Sleeps
) -> None:
    sim.set_fault("error")
    with pytest.raises(ChannelUnavailable) as info:
        do_charge(client)
    assert len(sim.requests) == 3  # 1 + max_retries
    assert len(sleeps) == 2 and sleeps[1] >= sleeps[0] / 2  # backoff grows (with jitter)
    assert info.value.retry_after >= 1
    assert info.value.headers["Retry-After"] == str(info.value.retry_after)
    assert intents_for(sim, "pay_1") == []


def test_429_honours_retry_after(client: StripeClient, sim: RecordingSim, sleeps: Sleeps) -> None:
    sim.throttle_next = 1
    assert do_charge(client).outcome == "succeeded"
    assert sleeps == [1.0]
    assert len(intents_for(sim, "pay_1")) == 1


@pytest.mark.parametrize("scenario", ["bad_key", "key_reuse"])
def test_other_4xx_is_channel_error_and_never_retried(
    server: SimServer,
    exporter: InMemorySpanExporter,
    sleeps: Sleeps,
    sim: RecordingSim,
    scenario: str,
) -> None:
    breaker = CircuitBreaker("stripe", failure_threshold=1, reset_seconds=30)
    client = make_client(server, exporter, sleeps, breaker=breaker)
    if scenario == "bad_key":
        client = make_client(server, exporter, sleeps, breaker=breaker, api_key="sk_live_nope")
    else:
        do_charge(client)
        sim.requests.clear()
    with pytest.raises(ChannelError) as info:
        do_charge(client, amount=999)
    assert info.value.status == 502 and info.value.code == "channel_error"
    assert len(sim.requests) == 1
    assert sleeps == []
    assert state(breaker) == "closed"  # the provider answered: not an outage
    assert API_KEY not in info.value.message and "nope" not in str(info.value.details)


def test_read_timeout_is_unavailable(
    server: SimServer, exporter: InMemorySpanExporter, sleeps: Sleeps, sim: RecordingSim
) -> None:
    client = make_client(server, exporter, sleeps, read_timeout=0.2, max_retries=0)
    sim.set_fault("hang", hang_seconds=1.0)
    start = time.monotonic()
    with pytest.raises(ChannelUnavailable):
        do_charge(client)
    assert time.monotonic() - start < 0.9
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "timeout"
    assert any(e.name == "exception" for e in span.events)


def test_timeout_then_retry_still_charges_once(
    server: SimServer, exporter: InMemorySpanExporter, sleeps: Sleeps, sim: RecordingSim
) -> None:
    # The timed-out request still completes on the provider's side: only the shared
    # Idempotency-Key keeps the retry from charging a second time.
    client = make_client(server, exporter, sleeps, read_timeout=0.2, max_retries=1)
    sim.set_fault("hang", count=1, hang_seconds=0.5)
    assert do_charge(client).outcome == "succeeded"
    time.sleep(0.6)  # let the hung first attempt finish on the simulator
    assert len(intents_for(sim, "pay_1")) == 1
    assert len(sim.requests) == 2


def test_connection_refused_is_unavailable(
    exporter: InMemorySpanExporter, sleeps: Sleeps, server: SimServer
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(server, exporter, sleeps, base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ChannelUnavailable):
        do_charge(client)
    assert len(sleeps) == 2
    assert len(exporter.get_finished_spans()) == 3  # one client span per attempt


# ---- circuit breaker integration -------------------------------------------------------


def test_open_breaker_fails_fast_without_http(
    server: SimServer, exporter: InMemorySpanExporter, sleeps: Sleeps, sim: RecordingSim
) -> None:
    now = [0.0]
    breaker = CircuitBreaker("stripe", failure_threshold=2, reset_seconds=10, clock=lambda: now[0])
    client = make_client(server, exporter, sleeps, breaker=breaker, max_retries=0)
    sim.set_fault("error")
    for _ in range(2):
        with pytest.raises(ChannelUnavailable):
            do_charge(client)
    assert state(breaker) == "open"
    sent = len(sim.requests)
    now[0] = 3.5
    with pytest.raises(ChannelUnavailable) as info:
        do_charge(client)
    assert len(sim.requests) == sent
    assert info.value.retry_after == 7
    sim.set_fault("none")
    now[0] = 10.0
    assert do_charge(client).outcome == "succeeded"  # the half-open trial
    assert state(breaker) == "closed"


# ---- tracing -------------------------------------------------------------------------


def spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())


def test_client_span_and_traceparent_on_the_wire(
    client: StripeClient, sim: RecordingSim, exporter: InMemorySpanExporter, server: SimServer
) -> None:
    do_charge(client)
    [span] = spans(exporter)
    assert span.name == "stripe: POST /v1/payment_intents"
    assert span.kind is SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    assert attrs["http.request.method"] == "POST"
    assert attrs["url.full"] == f"{server.url}/v1/payment_intents"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["http.response.status_code"] == 200
    assert attrs["peer.service"] == "stripe"
    ctx = span.get_span_context()
    assert ctx is not None
    [(_, headers, _)] = sim.requests
    version, trace_id, span_id, _flags = headers["Traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")


def test_decline_and_refund_spans(
    client: StripeClient, exporter: InMemorySpanExporter, sim: RecordingSim
) -> None:
    do_charge(client, "pm_card_chargeDeclinedInsufficientFunds")
    ref = do_charge(client, payment_no="p2", idempotency_key="c2").channel_reference
    client.refund(charge_reference=ref, amount=10, idempotency_key="r")
    declined, _, refund = spans(exporter)
    assert declined.attributes is not None
    assert declined.attributes["payment.decline_code"] == "insufficient_funds"
    assert declined.attributes["http.response.status_code"] == 402
    assert refund.name == "stripe: POST /v1/refunds"


def test_secrets_never_reach_spans(
    client: StripeClient, exporter: InMemorySpanExporter, sim: RecordingSim
) -> None:
    sim.set_fault("error", count=1)
    do_charge(client, "pm_card_chargeDeclined")
    do_charge(client, payment_no="p2", idempotency_key="c2")
    assert len(spans(exporter)) == 3
    for span in spans(exporter):
        text = repr(dict(span.attributes or {})) + repr([e.attributes for e in span.events])
        for secret in (API_KEY, "pm_card", "Bearer"):
            assert secret not in text
    assert API_KEY not in repr(client)


def test_retry_spans_carry_resend_count(
    client: StripeClient, exporter: InMemorySpanExporter, sim: RecordingSim
) -> None:
    sim.set_fault("error", count=1)
    do_charge(client)
    first, second = spans(exporter)
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes is not None and first.attributes["http.response.status_code"] == 500
    assert second.attributes is not None and second.attributes["http.request.resend_count"] == 1
    first_ctx, second_ctx = first.get_span_context(), second.get_span_context()
    assert first_ctx is not None and second_ctx is not None
    assert first_ctx.span_id != second_ctx.span_id


# ---- get_channel ---------------------------------------------------------------------


@pytest.fixture
def env_settings(monkeypatch: pytest.MonkeyPatch, server: SimServer) -> Iterator[None]:
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_MAX_RETRIES", "0")
    monkeypatch.setenv("BREAKER_FAILURE_THRESHOLD", "1")
    get_settings.cache_clear()
    channel.reset_channels()
    yield
    get_settings.cache_clear()
    channel.reset_channels()


def test_get_channel_is_cached_and_built_from_settings(
    env_settings: None, sim: RecordingSim, server: SimServer
) -> None:
    client = get_channel("stripe")
    assert client is get_channel("stripe")
    assert isinstance(client, StripeClient)
    assert client.base_url == server.url and client.max_retries == 0
    assert breaker_states() == {"stripe": "closed"}
    sim.set_fault("error")
    with pytest.raises(ChannelUnavailable):
        client.charge(
            payment_no="p",
            amount=1,
            currency="usd",
            payment_method="pm_card_visa",
            idempotency_key="k",
        )
    assert breaker_states() == {"stripe": "open"}


def test_get_channel_unknown_name(env_settings: None) -> None:
    with pytest.raises(UnsupportedChannel):
        get_channel("paypal")
