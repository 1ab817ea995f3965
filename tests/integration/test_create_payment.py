"""SPEC §2 create-payment outcomes and §7 scenarios through the real handlers."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from payments.logic import orders as order_logic
from tests.integration.conftest import Platform, metric
from tests.support import api_event, payment_body

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def _assert_traced(body: dict[str, Any], headers: dict[str, str]) -> None:
    assert TRACE_ID.match(headers["X-Trace-ID"])
    assert body["trace_id"] == headers["X-Trace-ID"]


def test_success_charges_once_and_marks_order_paid(platform: Platform) -> None:
    before = metric("payment_total", status="success", currency="USD", channel="stripe")
    status, body, headers = platform.pay(amount=1999, currency="USD")
    assert status == 201, body
    _assert_traced(body, headers)
    assert body["status"] == "succeeded"
    assert body["amount"] == 1999 and body["currency"] == "USD"
    assert body["risk"] == {"decision": "approve", "score": 0}
    assert body["channel_reference"].startswith("pi_")
    assert body["refunded_amount"] == 0
    status, order, _ = platform.get_order(body["order_no"])
    assert status == 200 and order["status"] == "paid" and order["payment_no"] == body["payment_no"]
    charges = [i for i in platform.intents() if i["id"] == body["channel_reference"]]
    assert len(charges) == 1 and charges[0]["amount"] == 1999
    assert metric("payment_total", status="success", currency="USD", channel="stripe") == before + 1


def test_zero_decimal_currency_is_charged_in_minor_units(platform: Platform) -> None:
    status, body, _ = platform.pay(amount=1000, currency="JPY")
    assert status == 201, body
    intent = next(i for i in platform.intents() if i["id"] == body["channel_reference"])
    assert intent["amount"] == 1000 and intent["currency"] == "jpy"


@pytest.mark.parametrize("currency", ["XXX", "usd", "US"])
def test_unsupported_currency_stores_nothing(platform: Platform, currency: str) -> None:
    items = platform.count_items()
    status, body, headers = platform.pay(currency=currency)
    assert status == 400 and body["error"]["code"] == "unsupported_currency"
    _assert_traced(body, headers)
    assert platform.count_items() == items


def test_unsupported_channel(platform: Platform) -> None:
    status, body, _ = platform.pay(channel="paypal")
    assert status == 400 and body["error"]["code"] == "unsupported_channel"


@pytest.mark.parametrize("amount", [None, 10.5, "100", 0, -5, 100_000_000_001, True])
def test_invalid_amount(platform: Platform, amount: Any) -> None:
    body = payment_body(amount=amount)
    if amount is None:
        del body["amount"]
    items = platform.count_items()
    status, resp, _ = platform.call(
        "CreatePaymentFunction", api_event("POST", "/api/v1/payments", body=body)
    )
    assert status == 400 and resp["error"]["code"] == "invalid_amount"
    assert platform.count_items() == items


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("merchant_order_no", "has space"),
        ("merchant_order_no", "x" * 65),
        ("payment_method", 123),
        ("customer", {"country": "usa"}),
        ("metadata", {f"k{i}": "v" for i in range(21)}),
        ("description", "d" * 501),
    ],
)
def test_invalid_fields_name_the_field(platform: Platform, field: str, value: Any) -> None:
    status, body, _ = platform.pay(**{field: value})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert any(d["field"].startswith(field) for d in body["error"]["details"])
    # Details name fields and rules, never the submitted values.
    assert all(set(d) == {"field", "issue", "code"} for d in body["error"]["details"])
    sent = value if isinstance(value, str) else json.dumps(value)
    assert sent not in json.dumps(body)


def test_malformed_json_and_oversized_body(platform: Platform) -> None:
    status, body, _ = platform.call(
        "CreatePaymentFunction", api_event("POST", "/api/v1/payments", body=b"{not json")
    )
    assert status == 400 and body["error"]["code"] == "invalid_request"
    big = json.dumps(payment_body(description="x" * 40_000)).encode()
    status, body, _ = platform.call(
        "CreatePaymentFunction", api_event("POST", "/api/v1/payments", body=big)
    )
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_duplicate_merchant_order_no(platform: Platform) -> None:
    first, _, _ = platform.pay(merchant_order_no="dup-order-1")
    assert first == 201
    before = metric("payment_total", status="duplicate")
    status, body, _ = platform.pay(merchant_order_no="dup-order-1", amount=5)
    assert status == 409 and body["error"]["code"] == "duplicate_order"
    assert metric("payment_total", status="duplicate") == before + 1


def test_risk_rejected_makes_no_order_and_no_charge(platform: Platform) -> None:
    intents = len(platform.intents())
    status, body, _ = platform.pay(customer={"id": "cus_kp", "country": "KP"})
    assert status == 402 and body["status"] == "risk_rejected"
    assert body["error"]["code"] == "risk_rejected"
    assert body["risk"] == {"decision": "reject", "score": 100}
    assert body["order_no"] is None
    assert len(platform.intents()) == intents


def test_manual_review_makes_no_charge(platform: Platform) -> None:
    intents = len(platform.intents())
    status, body, _ = platform.pay(amount=500_000)
    assert status == 202 and body["status"] == "pending_review"
    assert body["risk"] == {"decision": "review", "score": 60}
    assert len(platform.intents()) == intents


def test_velocity_rule(platform: Platform) -> None:
    customer = {"id": "cus_velocity", "country": "US"}
    statuses = [platform.pay(amount=100, customer=customer)[0] for _ in range(11)]
    assert statuses[:10] == [201] * 10
    status, body, _ = platform.pay(amount=100, customer=customer)
    assert status == 202 and body["risk"]["score"] == 50


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ],
)
def test_channel_declined_cancels_order(platform: Platform, method: str, code: str) -> None:
    before = metric("payment_total", status="failed")
    status, body, _ = platform.pay(payment_method=method)
    assert status == 402 and body["status"] == "failed"
    assert body["error"]["code"] == "channel_declined"
    status, order, _ = platform.get_order(body["order_no"])
    assert order["status"] == "cancelled"
    assert metric("payment_total", status="failed") == before + 1


def test_provider_500s_are_an_unknown_outcome_kept_processing(platform: Platform) -> None:
    platform.fault("error")
    status, body, _ = platform.pay()
    assert status == 202 and body["status"] == "processing"
    _, order, _ = platform.get_order(body["order_no"])
    assert order["status"] == "created"  # nothing cancelled: the charge may have happened
    _, got, _ = platform.get_payment(body["payment_no"])
    assert got["status"] == "processing"
    assert metric("payment_total", status="processing") >= 1


def test_open_breaker_is_503_with_its_remaining_time_and_nothing_stored(
    platform: Platform,
) -> None:
    from payments import services

    services.breaker_store().open("stripe", time.time() + 20)
    services.reset_channels()  # this environment re-reads the shared state at once
    headers = {"Idempotency-Key": f"k-{time.monotonic_ns()}"}
    body = payment_body()
    event = api_event("POST", "/api/v1/payments", body=body, headers=headers)
    try:
        status, answer, response_headers = platform.call("CreatePaymentFunction", event)
        assert status == 503 and answer["error"]["code"] == "channel_unavailable"
        assert 15 <= int(response_headers["Retry-After"]) <= 20
        assert "payment_no" not in answer  # the error shape, nothing stored
    finally:
        services.breaker_store().close("stripe", time.time() + 60)
        services.reset_channels()
    status, answer, _ = platform.call(
        "CreatePaymentFunction", api_event("POST", "/api/v1/payments", body=body, headers=headers)
    )
    assert status == 201 and answer["status"] == "succeeded"  # same key, runs again


def test_order_creation_failure_makes_no_charge(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("order store down")

    monkeypatch.setattr(order_logic, "create", broken)
    intents = len(platform.intents())
    body = payment_body()
    status, answer, _ = platform.pay(**body)
    assert status == 500 and answer["error"]["code"] == "order_creation_failed"
    assert len(platform.intents()) == intents
    [payment] = platform.list_payments(merchant_order_no=body["merchant_order_no"])["data"]
    assert payment["status"] == "failed" and payment["order_no"] is None
    monkeypatch.undo()
    status, again, _ = platform.pay(**body)  # a failed order can be paid again
    assert status == 201 and again["payment_no"] != payment["payment_no"]


def test_idempotent_replay_returns_first_response_without_second_charge(platform: Platform) -> None:
    headers = {"Idempotency-Key": "idem-replay-1"}
    body = payment_body()
    first = platform.call(
        "CreatePaymentFunction", api_event("POST", "/api/v1/payments", body=body, headers=headers)
    )
    second = platform.call(
        "CreatePaymentFunction", api_event("POST", "/api/v1/payments", body=body, headers=headers)
    )
    assert first[0] == second[0] == 201
    strip = lambda b: {k: v for k, v in b.items() if k != "trace_id"}  # noqa: E731
    assert strip(first[1]) == strip(second[1])
    ref = first[1]["channel_reference"]
    assert sum(1 for i in platform.intents() if i["id"] == ref) == 1
    assert (
        sum(
            1
            for i in platform.intents()
            if i.get("metadata", {}).get("payment_no") == first[1]["payment_no"]
        )
        == 1
    )


def test_idempotency_key_reused_with_other_body(platform: Platform) -> None:
    headers = {"Idempotency-Key": "idem-reuse-1"}
    assert platform.pay(headers=headers)[0] == 201
    status, body, _ = platform.pay(headers=headers)
    assert status == 422 and body["error"]["code"] == "idempotency_key_reused"


def test_idempotency_key_length(platform: Platform) -> None:
    status, body, _ = platform.pay(headers={"Idempotency-Key": "k" * 256})
    assert status == 400 and body["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    "event_kw",
    [
        {"signed": False},
        {"key": "mk_unknown"},
        {"secret": "wrong"},
        {"timestamp_offset": -301},
        {"timestamp_offset": 330},
    ],
)
def test_unauthorized(platform: Platform, event_kw: dict[str, Any]) -> None:
    items = platform.count_items()
    if "timestamp_offset" in event_kw:
        event_kw = {"timestamp": int(time.time()) + event_kw.pop("timestamp_offset")}
    event = api_event("POST", "/api/v1/payments", body=payment_body(), **event_kw)
    status, body, headers = platform.call("CreatePaymentFunction", event)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    _assert_traced(body, headers)
    assert platform.count_items() == items


def test_signature_covers_body(platform: Platform) -> None:
    event = api_event("POST", "/api/v1/payments", body=payment_body(amount=100))
    event["body"] = event["body"].replace('"amount": 100', '"amount": 999')
    status, _, _ = platform.call("CreatePaymentFunction", event)
    assert status == 401


def test_get_payment_and_other_merchant_sees_404(platform: Platform) -> None:
    _, created, _ = platform.pay()
    status, body, _ = platform.get_payment(created["payment_no"])
    assert status == 200 and body["payment_no"] == created["payment_no"] and body["refunds"] == []
    table = platform.aws.env["PAYMENTS_TABLE"]
    platform.aws.client("dynamodb").put_item(
        TableName=table,
        Item={
            "pk": {"S": "APIKEY#mk_other"},
            "sk": {"S": "APIKEY"},
            "merchant_id": {"S": "merch_other"},
            "secret": {"S": "sk_other"},
            "status": {"S": "active"},
        },
    )
    status, body, _ = platform.get_payment(created["payment_no"], key="mk_other", secret="sk_other")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _, _ = platform.get_order(created["order_no"], key="mk_other", secret="sk_other")
    assert status == 404
    assert platform.get_payment("pay_missing")[0] == 404
    assert platform.get_order("ord_missing")[0] == 404


def test_unknown_route_and_wrong_method(platform: Platform) -> None:
    event = api_event("GET", "$default", path="/api/v1/nothing")
    event["routeKey"] = "$default"
    status, body, _ = platform.call("CreatePaymentFunction", event)
    assert status == 404 and body["error"]["code"] == "not_found"
    event = api_event("DELETE", "$default", path="/api/v1/payments")
    event["routeKey"] = "$default"
    status, body, headers = platform.call("CreatePaymentFunction", event)
    assert status == 405 and headers["Allow"] == "GET, POST"
    event = api_event("GET", "$default", path="/api/v1/payments/pay_1/refunds")
    event["routeKey"] = "$default"
    status, _, headers = platform.call("CreatePaymentFunction", event)
    assert status == 405 and headers["Allow"] == "POST"


def test_health(platform: Platform) -> None:
    status, body, _ = platform.call(
        "CreatePaymentFunction", api_event("GET", "/health", signed=False)
    )
    assert status == 200 and body["status"] == "ok"
    assert body["checks"]["storage"] == "ok"
    assert body["checks"]["circuit_breakers"]["stripe"] == {"state": "closed"}
    backlog = body["checks"]["reconciliation"]
    assert set(backlog) == {"payments", "refunds"}
    assert backlog["payments"]["unresolved"] >= 0
