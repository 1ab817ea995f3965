"""POST /webhooks/stripe (SPEC §2): Stripe-Signature verified (tolerance, rotation) with the
official SDK signing, events deduplicated, and used only as hints that re-read the provider."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from tests.integration.conftest import Platform, metric, running_platform
from tests.support import api_event, payment_body

OLD, NEW = "whsec_old_secret", "whsec_new_secret"


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    with running_platform(STRIPE_WEBHOOK_SECRETS=f"{NEW},{OLD}") as running:
        running.sim_config(search_delay_seconds=0)
        yield running


def deliver(
    platform: Platform,
    event: dict[str, Any] | bytes,
    *,
    secret: str = NEW,
    timestamp: int | None = None,
    header: str | None = None,
) -> tuple[int, dict[str, Any]]:
    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    signature = header or stripe.WebhookSignature.generate_signature_header(
        raw.decode("utf-8", "replace"), secret, timestamp
    )
    request = api_event(
        "POST", "/webhooks/stripe", signed=False, headers={"Stripe-Signature": signature}
    )
    # Any bytes at all, as API Gateway passes a body it cannot read as text.
    request["body"], request["isBase64Encoded"] = base64.b64encode(raw).decode(), True
    status, body, headers = platform.call("WebhookFunction", request)
    assert headers["X-Trace-ID"] == body["trace_id"]
    return status, body


def event_for(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }


def processing_payment(platform: Platform, mode: str = "error_after") -> dict[str, Any]:
    body = payment_body()
    platform.add_fault(mode, count=1, match=body["merchant_order_no"])
    status, answer, _ = platform.pay(**body)
    assert status == 202 and answer["status"] == "processing", answer
    return answer


def intent_of(platform: Platform, payment_no: str) -> dict[str, Any]:
    [intent] = [i for i in platform.intents() if i["metadata"].get("payment_no") == payment_no]
    return intent


def test_a_payment_intent_event_settles_its_payment_from_the_providers_record(
    platform: Platform,
) -> None:
    payment = processing_payment(platform)
    intent = intent_of(platform, payment["payment_no"])
    before = metric("webhook_events_total", type="payment_intent.succeeded", result="processed")
    status, body = deliver(platform, event_for("payment_intent.succeeded", intent))
    assert status == 200 and body["result"] == "processed"
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["status"] == "succeeded" and got["channel_reference"] == intent["id"]
    _, order, _ = platform.get_order(payment["order_no"])
    assert order["status"] == "paid"
    assert (
        metric("webhook_events_total", type="payment_intent.succeeded", result="processed")
        == before + 1
    )


def test_events_are_hints_the_provider_is_reread(platform: Platform) -> None:
    payment = processing_payment(platform, mode="error")  # nothing charged at the provider
    forged = {
        "id": "pi_forged",
        "object": "payment_intent",
        "status": "succeeded",
        "amount": payment["amount"],
        "metadata": {"payment_no": payment["payment_no"]},
    }
    status, _ = deliver(platform, event_for("payment_intent.succeeded", forged))
    assert status == 200
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["status"] == "processing"  # a signed claim is not the provider's record


def test_duplicates_are_ignored(platform: Platform) -> None:
    payment = processing_payment(platform)
    event = event_for("payment_intent.succeeded", intent_of(platform, payment["payment_no"]))
    assert deliver(platform, event)[1]["result"] == "processed"
    assert deliver(platform, event)[1]["result"] == "duplicate"


def test_refund_events_settle_a_pending_refund(platform: Platform) -> None:
    status, paid, _ = platform.pay(amount=800)
    assert status == 201
    platform.add_fault("error_after", count=1, path="/v1/refunds")
    status, pending, _ = platform.refund(paid["payment_no"], {"amount": 300})
    assert status == 202 and pending["status"] == "pending"
    [refund] = intent_of(platform, paid["payment_no"])["refunds"]
    status, body = deliver(platform, event_for("refund.updated", refund))
    assert status == 200 and body["result"] == "processed"
    _, got, _ = platform.get_payment(paid["payment_no"])
    assert got["refunded_amount"] == 300 and got["refunds"][0]["status"] == "succeeded"


def test_unknown_types_and_foreign_objects_are_acknowledged_and_ignored(
    platform: Platform,
) -> None:
    status, body = deliver(platform, event_for("customer.created", {"id": "cus_1"}))
    assert status == 200 and body["result"] == "ignored"
    foreign = {"id": "pi_x", "metadata": {"payment_no": "pay_not_ours"}}
    assert deliver(platform, event_for("payment_intent.succeeded", foreign))[1]["result"] == (
        "ignored"
    )


def test_signatures_rotation_and_tolerance(platform: Platform) -> None:
    event = event_for("customer.created", {"id": "cus_1"})
    assert deliver(platform, event, secret=OLD)[0] == 200  # the previous secret, during rotation
    before = metric("webhook_events_total", type="unknown", result="invalid_signature")
    stale = int(time.time()) - 301
    cases: list[dict[str, Any]] = [
        {"secret": "whsec_wrong"},
        {"timestamp": stale},
        {"header": "t=1,v1=" + "0" * 64},
        {"header": "garbage"},
        {"header": "t=\u00e9,v1=\u00ff"},
        {"header": "x" * 10_000},
    ]
    for case in cases:
        status, body = deliver(platform, event, **case)
        assert status == 400 and body["error"]["code"] == "invalid_signature", case
    assert metric("webhook_events_total", type="unknown", result="invalid_signature") == (
        before + len(cases)
    )


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"id": "evt_1"}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000]
)
def test_malformed_bodies_are_400_never_500(platform: Platform, raw: bytes) -> None:
    status, body = deliver(platform, raw)
    assert status == 400 and body["error"]["code"] == "invalid_signature"


def test_a_hint_that_cannot_be_followed_now_is_503_and_not_recorded(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from payments import services
    from payments.channel import LookupFailed

    payment = processing_payment(platform)
    event = event_for("payment_intent.succeeded", intent_of(platform, payment["payment_no"]))
    client = services.channel("stripe")

    def down(**_: Any) -> None:
        raise LookupFailed("provider unreachable")

    monkeypatch.setattr(client, "find_intent", down)
    status, body = deliver(platform, event)
    assert status == 503 and body["error"]["code"] == "service_unavailable"
    monkeypatch.undo()
    assert deliver(platform, event)[1]["result"] == "processed"  # Stripe's retry, afresh
    assert platform.get_payment(payment["payment_no"])[1]["status"] == "succeeded"
