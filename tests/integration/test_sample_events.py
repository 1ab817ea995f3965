"""Every file in events/ runs through its real handler (what `sam local invoke -e` does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from local.invoke import load_event, refresh_signature
from payments.logic import utc_now
from payments.models import Payment, PaymentStatus
from payments.records import load
from payments.services import payment_store
from payments.store.payments import Settlement
from tests.integration.conftest import Platform

EVENTS = Path(__file__).resolve().parents[2] / "events"


def _event(name: str) -> dict[str, Any]:
    event = load_event(str(EVENTS / name))
    if "x-api-key" in (event.get("headers") or {}):
        event = refresh_signature(event, "mk_demo", "sk_demo_secret")
    return event


def _api(platform: Platform, function: str, name: str) -> tuple[int, dict[str, Any]]:
    result = platform.invoke(function, _event(name))
    return result["statusCode"], json.loads(result["body"])


def test_api_events(platform: Platform) -> None:
    assert _api(platform, "CreatePaymentFunction", "create_payment_success.json")[0] == 201
    status, body = _api(platform, "CreatePaymentFunction", "create_payment_declined.json")
    assert status == 402 and body["error"]["code"] == "channel_declined"
    status, body = _api(platform, "CreatePaymentFunction", "create_payment_invalid_currency.json")
    assert status == 400 and body["error"]["code"] == "unsupported_currency"
    assert _api(platform, "CreatePaymentFunction", "health.json")[0] == 200


def test_workflow_task_events_then_lookups_and_refund(platform: Platform) -> None:
    risk = platform.invoke("RiskCheckFunction", _event("risk_check.json"))
    assert risk["decision"] == "approve"
    order = platform.invoke("OrderFunction", _event("order_create.json"))
    assert order == {"order_no": "ord_7f3c2a9e4b1d4c6e8a0f5b2d9c7e1a34", "status": "created"}
    charge = platform.invoke("ChannelFunction", _event("channel_payment.json"))
    assert charge["outcome"] == "succeeded" and charge["channel_reference"].startswith("pi_")
    paid = platform.invoke("OrderFunction", _event("order_mark_paid.json"))
    assert paid["status"] == "paid"
    _, error = platform.aws.runtime.invoke("OrderFunction", _event("order_cancel.json"))
    assert error is not None and error["errorType"] == "InvalidStatus"  # a paid order stays paid

    # The payment those tasks worked for, as the gateway would have stored it.
    task_payment = _event("channel_payment.json")["payment"]
    now = utc_now()
    payment = load(
        Payment,
        {
            **task_payment,
            "merchant_order_no": "sample-events-1",  # order-1001 belongs to the API sample
            "status": PaymentStatus.PROCESSING,
            "updated_at": now,
        },
    )
    payment_store().create(payment)
    payment_store().settle(
        payment,
        Settlement(
            PaymentStatus.SUCCEEDED,
            {"order_no": order["order_no"], "channel_reference": charge["channel_reference"]},
        ),
        now=now,
    )
    status, body = _api(platform, "CreatePaymentFunction", "get_payment.json")
    assert status == 200 and body["status"] == "succeeded"
    status, body = _api(platform, "CreatePaymentFunction", "get_order.json")
    assert status == 200 and body["status"] == "paid"
    status, body = _api(platform, "RefundFunction", "refund_partial.json")
    assert status == 201 and body["payment_status"] == "partially_refunded"


def test_reconciler_and_webhook_events(platform: Platform) -> None:
    from local.invoke import refresh_webhook_signature

    result = platform.invoke("ReconcilerFunction", _event("reconciler_scheduled.json"))
    assert isinstance(result["outcomes"], dict)
    webhook = refresh_webhook_signature(
        _event("webhook_payment_intent_succeeded.json"), "whsec_local_secret"
    )
    answer = platform.invoke("WebhookFunction", webhook)
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["received"] is True
