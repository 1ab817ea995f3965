"""StripeClient against the real simulator over loopback HTTP: wire format, and the outcome
semantics of SPEC §4 (a provider answer or a request that never left is final; anything
that may have been executed is unknown, never a failure)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from werkzeug.wrappers import Request, Response

import payments.channel as channel
from local.stripe_sim import SimServer, StripeSimulator, serve
from payments.channel import CallOutcome, ChargeResult, IntentState, LookupFailed, get_channel
from payments.channel.breaker import CircuitBreaker
from payments.channel.stripe import StripeClient
from payments.config import get_settings
from payments.errors import UnsupportedChannel
from payments.records import dump_json

API_KEY = "sk_test_secret_do_not_leak"


def state(breaker: CircuitBreaker) -> str:
    return breaker.state  # via a call, so mypy does not narrow the Literal


class RecordingSim(StripeSimulator):
    """The simulator, plus a log of what arrived on the wire and canned answers that stand
    in front of it (a load balancer's 5xx or 429: nothing reaches the simulator)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.canned: list[tuple[int, dict[str, str], str]] = []
        self._rec_lock = threading.Lock()

    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/v1/"):
            with self._rec_lock:
                self.requests.append(
                    (request.path, dict(request.headers), dict(request.form.items()))
                )
                if self.canned:
                    status, headers, body = self.canned.pop(0)
                    return Response(body, status, headers, mimetype="application/json")
        return super().dispatch(request)

    def answer(self, status: int, times: int = 1, **headers: str) -> None:
        body = '{"error": {"type": "api_error", "message": "canned"}}'
        entry = (status, {k.replace("_", "-"): v for k, v in headers.items()}, body)
        with self._rec_lock:
            self.canned.extend([entry] * times)

    def clear(self) -> None:
        self.reset()
        with self._rec_lock:
            self.requests.clear()
            self.canned.clear()


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


def do_charge(client: StripeClient, pm: str = "pm_card_visa", **kw: Any) -> ChargeResult:
    args: dict[str, Any] = {
        "payment_no": "pay_1",
        "merchant_order_no": "order-1",
        "amount": 1000,
        "currency": "USD",
        "payment_method": pm,
        "idempotency_key": "charge-pay_1",
    }
    args.update(kw)
    return client.charge(**args)


def do_refund(client: StripeClient, ref: str, amount: int, key: str, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "refund_no": key,
        "payment_no": "pay_1",
        "charge_reference": ref,
        "amount": amount,
        "idempotency_key": key,
    }
    args.update(kw)
    return client.refund(**args)


def intents_for(sim: StripeSimulator, payment_no: str) -> list[dict[str, Any]]:
    return [i for i in sim.payment_intents() if i["metadata"].get("payment_no") == payment_no]


# ---- final answers ----------------------------------------------------------------------


def test_charge_succeeds_with_stripe_wire_format(client: StripeClient, sim: RecordingSim) -> None:
    result = do_charge(client)
    assert result.outcome is CallOutcome.SUCCEEDED and result.failure is None
    [intent] = intents_for(sim, "pay_1")
    assert result.channel_reference == intent["id"]
    assert (intent["amount"], intent["currency"], intent["status"]) == (1000, "usd", "succeeded")
    assert intent["metadata"] == {"payment_no": "pay_1", "merchant_order_no": "order-1"}
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
def test_declines_are_final_results(
    client: StripeClient, sim: RecordingSim, pm: str, code: str
) -> None:
    result = do_charge(client, pm)
    assert result.outcome is CallOutcome.DECLINED and result.decline_code == code
    assert state(client.breaker) == "closed"


def test_declined_intent_reference_is_kept(client: StripeClient, sim: RecordingSim) -> None:
    result = do_charge(client, "pm_card_chargeDeclined")
    [intent] = intents_for(sim, "pay_1")
    assert result.channel_reference == intent["id"]


def test_refund_success_partial_reason_and_metadata(
    client: StripeClient, sim: RecordingSim
) -> None:
    ref = do_charge(client).channel_reference
    assert ref is not None
    r1 = do_refund(client, ref, 400, "re_1", reason="requested_by_customer")
    r2 = do_refund(client, ref, 100, "re_2", reason="changed mind")
    assert (r1.outcome, r2.outcome) == (CallOutcome.SUCCEEDED, CallOutcome.SUCCEEDED)
    [intent] = intents_for(sim, "pay_1")
    assert [r["id"] for r in intent["refunds"]] == [r1.channel_reference, r2.channel_reference]
    assert [r["reason"] for r in intent["refunds"]] == ["requested_by_customer", None]
    assert intent["refunds"][1]["metadata"] == {
        "reason": "changed mind",
        "refund_no": "re_2",
        "payment_no": "pay_1",
    }


def test_refund_declines(client: StripeClient, sim: RecordingSim) -> None:
    ref = do_charge(client, "pm_card_refundFail").channel_reference
    assert ref is not None
    failed = do_refund(client, ref, 100, "r1")
    assert (failed.outcome, failed.decline_code) == (CallOutcome.DECLINED, "declined")
    ok = do_charge(client, payment_no="pay_2", idempotency_key="charge-pay_2").channel_reference
    assert ok is not None
    over = do_refund(client, ok, 5000, "r2")
    assert (over.outcome, over.decline_code) == (CallOutcome.DECLINED, "amount_too_large")


def test_refund_idempotency_key_replays_instead_of_refunding_twice(
    client: StripeClient, sim: RecordingSim
) -> None:
    ref = do_charge(client).channel_reference
    assert ref is not None
    a = do_refund(client, ref, 300, "same")
    b = do_refund(client, ref, 300, "same")
    assert a.channel_reference == b.channel_reference
    assert len(intents_for(sim, "pay_1")[0]["refunds"]) == 1


# ---- unknown outcomes: it may have been executed -------------------------------------------


def test_5xx_then_success_retries_with_same_key_and_charges_once(
    client: StripeClient, sim: RecordingSim, sleeps: Sleeps
) -> None:
    sim.answer(502)
    result = do_charge(client)
    assert result.outcome is CallOutcome.SUCCEEDED
    assert len(intents_for(sim, "pay_1")) == 1
    assert [h["Idempotency-Key"] for _, h, _ in sim.requests] == ["charge-pay_1"] * 2
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.05


def test_persistent_5xx_is_unknown_never_a_failure(
    client: StripeClient, sim: RecordingSim, sleeps: Sleeps
) -> None:
    sim.answer(500, times=3)
    result = do_charge(client)
    assert result.outcome is CallOutcome.UNKNOWN
    assert result.failure is not None and result.failure.code == "outcome_unknown"
    assert len(sim.requests) == 3  # 1 + max_retries
    assert len(sleeps) == 2 and sleeps[1] >= sleeps[0] / 2  # backoff grows (with jitter)


def test_should_retry_false_stops_retrying_a_saved_500(
    client: StripeClient, sim: RecordingSim, sleeps: Sleeps
) -> None:
    sim.answer(500, Stripe_Should_Retry="false")
    assert do_charge(client).outcome is CallOutcome.UNKNOWN
    assert len(sim.requests) == 1 and sleeps == []


def test_key_in_use_is_unknown(client: StripeClient, sim: RecordingSim) -> None:
    sim.answer(409, times=3, Stripe_Should_Retry="true")
    assert do_charge(client).outcome is CallOutcome.UNKNOWN


def test_read_timeout_is_unknown(
    server: SimServer, exporter: InMemorySpanExporter, sleeps: Sleeps, sim: RecordingSim
) -> None:
    client = make_client(server, exporter, sleeps, read_timeout=0.2, max_retries=0)
    sim.set_fault("hang", hang_seconds=0.6)
    start = time.monotonic()
    assert do_charge(client).outcome is CallOutcome.UNKNOWN
    assert time.monotonic() - start < 0.5
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "timeout"
    assert any(e.name == "exception" for e in span.events)
    time.sleep(0.6)  # the provider completes it anyway: exactly why it was "unknown"
    assert [i["status"] for i in intents_for(sim, "pay_1")] == ["succeeded"]


def test_connection_lost_after_sending_is_unknown(
    exporter: InMemorySpanExporter, sleeps: Sleeps, server: SimServer
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def read_then_hang_up() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.close()

    threading.Thread(target=read_then_hang_up, daemon=True).start()
    port = listener.getsockname()[1]
    client = make_client(server, exporter, sleeps, base_url=f"http://127.0.0.1:{port}")
    try:
        assert do_charge(client).outcome is CallOutcome.UNKNOWN
    finally:
        listener.close()


# ---- provably never reached the provider: final, retry later ---------------------------------


def test_connection_refused_is_unavailable(
    exporter: InMemorySpanExporter, sleeps: Sleeps, server: SimServer
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(server, exporter, sleeps, base_url=f"http://127.0.0.1:{port}")
    result = do_charge(client)
    assert result.outcome is CallOutcome.UNAVAILABLE
    assert result.failure is not None and result.failure.retry_after == 1
    assert len(sleeps) == 2
    assert len(exporter.get_finished_spans()) == 3  # one client span per attempt


def test_429_everywhere_is_unavailable_with_the_providers_hint(
    client: StripeClient, sim: RecordingSim, sleeps: Sleeps
) -> None:
    sim.answer(429, times=3, Retry_After="3")
    result = do_charge(client)
    assert result.outcome is CallOutcome.UNAVAILABLE
    assert result.failure is not None and result.failure.retry_after == 3
    assert intents_for(sim, "pay_1") == []


def test_429_then_success_honours_retry_after(
    client: StripeClient, sim: RecordingSim, sleeps: Sleeps
) -> None:
    sim.answer(429, Retry_After="1")
    assert do_charge(client).outcome is CallOutcome.SUCCEEDED
    assert sleeps == [1.0]


def test_one_unknown_attempt_makes_the_call_unknown(
    client: StripeClient, sim: RecordingSim
) -> None:
    sim.answer(500)
    sim.answer(429, times=2)
    assert do_charge(client).outcome is CallOutcome.UNKNOWN


@pytest.mark.parametrize("scenario", ["bad_key", "key_reuse"])
def test_other_4xx_is_rejected_and_never_retried(
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
    result = do_charge(client, amount=999)
    assert result.outcome is CallOutcome.REJECTED
    assert result.failure is not None and result.failure.code == "channel_error"
    assert len(sim.requests) == 1 and sleeps == []
    assert state(breaker) == "closed"  # the provider answered: not an outage
    assert API_KEY not in dump_json(result) and "nope" not in dump_json(result)


# ---- circuit breaker ------------------------------------------------------------------------


def test_open_breaker_fails_fast_with_its_remaining_time(
    server: SimServer, exporter: InMemorySpanExporter, sleeps: Sleeps, sim: RecordingSim
) -> None:
    now = [0.0]
    breaker = CircuitBreaker("stripe", failure_threshold=2, reset_seconds=10, clock=lambda: now[0])
    client = make_client(server, exporter, sleeps, breaker=breaker, max_retries=0)
    sim.answer(503, times=2)
    for _ in range(2):
        assert do_charge(client).outcome is CallOutcome.UNKNOWN
    assert state(breaker) == "open"
    sent = len(sim.requests)
    now[0] = 3.5
    result = do_charge(client)
    assert result.outcome is CallOutcome.UNAVAILABLE
    assert result.failure is not None and result.failure.retry_after == 7
    assert len(sim.requests) == sent
    now[0] = 10.0
    assert do_charge(client).outcome is CallOutcome.SUCCEEDED  # the half-open trial
    assert state(breaker) == "closed"


# ---- lookups --------------------------------------------------------------------------------


def test_find_intent_by_reference_and_by_search(
    client: StripeClient, sim: RecordingSim, server: SimServer
) -> None:
    ref = do_charge(client).channel_reference
    found = client.find_intent(payment_no="pay_1", reference=ref)
    assert found is not None and found.id == ref and found.state is IntentState.SUCCEEDED
    assert (found.amount, found.currency, found.payment_no) == (1000, "USD", "pay_1")
    requests.post(f"{server.url}/_sim/config", json={"search_delay_seconds": 0}, timeout=5)
    searched = client.find_intent(payment_no="pay_1", reference=None)
    assert searched is not None and searched.id == ref
    assert client.find_intent(payment_no="pay_none", reference=None) is None
    assert client.find_intent(payment_no="pay_1", reference="pi_missing") is None


def test_find_declined_intent_is_failed_with_its_code(
    client: StripeClient, sim: RecordingSim
) -> None:
    ref = do_charge(client, "pm_card_chargeDeclinedInsufficientFunds").channel_reference
    found = client.find_intent(payment_no="pay_1", reference=ref)
    assert found is not None and found.state is IntentState.FAILED
    assert found.decline_code == "insufficient_funds"


def test_find_refund_by_its_number(client: StripeClient, sim: RecordingSim) -> None:
    ref = do_charge(client).channel_reference
    assert ref is not None
    made = do_refund(client, ref, 250, "re_42")
    found = client.find_refund(refund_no="re_42", charge_reference=ref)
    assert found is not None and found.id == made.channel_reference
    assert (found.state, found.amount, found.refund_no) == (IntentState.SUCCEEDED, 250, "re_42")
    assert client.find_refund(refund_no="re_other", charge_reference=ref) is None


def test_lookup_without_an_answer_raises(client: StripeClient, sim: RecordingSim) -> None:
    sim.answer(500, times=3)
    with pytest.raises(LookupFailed):
        client.find_intent(payment_no="pay_1", reference="pi_x")


# ---- tracing -------------------------------------------------------------------------------


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


def test_decline_refund_and_lookup_spans(
    client: StripeClient, exporter: InMemorySpanExporter, sim: RecordingSim
) -> None:
    do_charge(client, "pm_card_chargeDeclinedInsufficientFunds")
    ref = do_charge(client, payment_no="p2", idempotency_key="c2").channel_reference
    assert ref is not None
    do_refund(client, ref, 10, "r")
    client.find_intent(payment_no="p2", reference=ref)
    declined, _, refund, lookup = spans(exporter)
    assert declined.attributes is not None
    assert declined.attributes["payment.decline_code"] == "insufficient_funds"
    assert declined.attributes["http.response.status_code"] == 402
    assert refund.name == "stripe: POST /v1/refunds"
    assert lookup.name == "stripe: GET /v1/payment_intents/{id}"  # no ids in span names


def test_secrets_never_reach_spans(
    client: StripeClient, exporter: InMemorySpanExporter, sim: RecordingSim
) -> None:
    sim.answer(500)
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
    sim.answer(500)
    do_charge(client)
    first, second = spans(exporter)
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes is not None and first.attributes["http.response.status_code"] == 500
    assert second.attributes is not None and second.attributes["http.request.resend_count"] == 1
    first_ctx, second_ctx = first.get_span_context(), second.get_span_context()
    assert first_ctx is not None and second_ctx is not None
    assert first_ctx.span_id != second_ctx.span_id


# ---- get_channel ---------------------------------------------------------------------------


@pytest.fixture
def env_settings(monkeypatch: pytest.MonkeyPatch, server: SimServer) -> Iterator[None]:
    monkeypatch.setenv("STRIPE_API_BASE", server.url)
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_MAX_RETRIES", "0")
    monkeypatch.setenv("BREAKER_FAILURE_THRESHOLD", "1")
    monkeypatch.setenv("BREAKER_SYNC_SECONDS", "1000")  # no shared store in this test
    get_settings.cache_clear()
    channel.reset_channels()
    yield
    get_settings.cache_clear()
    channel.reset_channels()


def test_get_channel_is_cached_and_built_from_settings(
    env_settings: None, sim: RecordingSim, server: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from payments import services

    published: list[float] = []

    class Shared:
        def opened_until(self, name: str) -> float | None:
            return None

        def open(self, name: str, until: float) -> None:
            published.append(until)

        def close(self, name: str, now: float) -> None:
            pass

    monkeypatch.setattr(services, "breaker_store", Shared)
    client = get_channel("stripe")
    assert client is get_channel("stripe")
    assert isinstance(client, StripeClient)
    assert client.base_url == server.url and client.max_retries == 0
    assert services.breaker("stripe").state == "closed"
    sim.answer(500)
    assert do_charge(client).outcome is CallOutcome.UNKNOWN
    assert services.breaker("stripe").state == "open"
    assert len(published) == 1  # the opening is shared with every environment


def test_get_channel_unknown_name(env_settings: None) -> None:
    with pytest.raises(UnsupportedChannel):
        get_channel("paypal")
