"""SPEC §2 refund outcomes and §7 refund scenarios, including concurrent refunds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.conftest import Platform, metric


def _paid(platform: Platform, amount: int = 1000, **kw: Any) -> dict[str, Any]:
    status, body, _ = platform.pay(amount=amount, **kw)
    assert status == 201, body
    return body


def test_partial_then_full_refund(platform: Platform) -> None:
    payment = _paid(platform, 1000)
    before = metric("refund_total", status="partial_success", currency="USD")
    status, body, headers = platform.refund(
        payment["payment_no"], {"amount": 300, "reason": "requested_by_customer"}
    )
    assert status == 201, body
    assert body["payment_status"] == "partially_refunded" and body["refunded_amount"] == 300
    assert body["status"] == "succeeded" and body["refund_no"].startswith("re_")
    assert body["trace_id"] == headers["X-Trace-ID"]
    assert metric("refund_total", status="partial_success", currency="USD") == before + 1
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 700})
    assert (
        status == 201 and body["payment_status"] == "refunded" and body["refunded_amount"] == 1000
    )
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["status"] == "refunded" and got["refunded_amount"] == 1000
    assert sorted(r["amount"] for r in got["refunds"]) == [300, 700]
    _, order, _ = platform.get_order(payment["order_no"])
    assert order["status"] == "refunded"
    intent = next(i for i in platform.intents() if i["id"] == payment["channel_reference"])
    assert sum(r["amount"] for r in intent["refunds"]) == 1000


def test_full_refund_in_one_go(platform: Platform) -> None:
    payment = _paid(platform, 2500)
    before = metric("refund_total", status="success")
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 2500})
    assert status == 201 and body["payment_status"] == "refunded"
    assert metric("refund_total", status="success") == before + 1


def test_refund_exceeding_is_422_and_changes_nothing(platform: Platform) -> None:
    payment = _paid(platform, 1000)
    assert platform.refund(payment["payment_no"], {"amount": 600})[0] == 201
    before = metric("refund_total", status="amount_exceeded", currency="USD")
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 401})
    assert status == 422 and body["error"]["code"] == "amount_exceeded"
    assert metric("refund_total", status="amount_exceeded", currency="USD") == before + 1
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["refunded_amount"] == 600 and got["status"] == "partially_refunded"


@pytest.mark.parametrize("amount", [0, -1, 10.5, "100", None, True])
def test_refund_invalid_amount(platform: Platform, amount: Any) -> None:
    payment = _paid(platform)
    body = {} if amount is None else {"amount": amount}
    status, resp, _ = platform.refund(payment["payment_no"], body)
    assert status == 400 and resp["error"]["code"] == "invalid_amount"
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["refunded_amount"] == 0 and got["status"] == "succeeded"


def test_refund_invalid_status(platform: Platform) -> None:
    _, declined, _ = platform.pay(payment_method="pm_card_chargeDeclined")
    before = metric("refund_total", status="invalid_status")
    status, body, _ = platform.refund(declined["payment_no"], {"amount": 100})
    assert status == 409 and body["error"]["code"] == "invalid_status"
    assert metric("refund_total", status="invalid_status") == before + 1
    paid = _paid(platform, 100)
    assert platform.refund(paid["payment_no"], {"amount": 100})[0] == 201
    status, body, _ = platform.refund(paid["payment_no"], {"amount": 1})
    assert status == 409 and body["error"]["code"] == "invalid_status"


def test_refund_declined_by_provider_changes_no_money(platform: Platform) -> None:
    payment = _paid(platform, 1000, payment_method="pm_card_refundFail")
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 400})
    assert status == 402 and body["error"]["code"] == "refund_failed"
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["refunded_amount"] == 0 and got["status"] == "succeeded"
    # The attempt is on record as failed (as the provider shows it), its amount released.
    assert [r["status"] for r in got["refunds"]] == ["failed"]
    platform.fault("none")
    assert platform.refund(payment["payment_no"], {"amount": 1000})[0] == 402  # refundable again


def test_refund_when_provider_unavailable_releases_reservation(platform: Platform) -> None:
    payment = _paid(platform, 1000)
    platform.fault("rate_limit")  # 429 on every attempt: the request provably never ran
    status, body, headers = platform.refund(payment["payment_no"], {"amount": 1000})
    assert (
        status == 503
        and body["error"]["code"] == "channel_unavailable"
        and "Retry-After" in headers
    )
    platform.fault("none")
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 1000})
    assert status == 201 and body["payment_status"] == "refunded"


def test_refund_unknown_or_foreign_payment_is_404(platform: Platform) -> None:
    status, body, _ = platform.refund("pay_doesnotexist", {"amount": 1})
    assert status == 404 and body["error"]["code"] == "not_found"


def test_refund_idempotent_replay(platform: Platform) -> None:
    payment = _paid(platform, 1000)
    headers = {"Idempotency-Key": "refund-key-1"}
    first = platform.refund(payment["payment_no"], {"amount": 250}, headers)
    second = platform.refund(payment["payment_no"], {"amount": 250}, headers)
    assert first[0] == second[0] == 201
    assert first[1]["refund_no"] == second[1]["refund_no"]
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["refunded_amount"] == 250 and len(got["refunds"]) == 1
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 251}, headers)
    assert status == 422 and body["error"]["code"] == "idempotency_key_reused"


def test_concurrent_partial_refunds_never_exceed_captured_amount(platform: Platform) -> None:
    payment = _paid(platform, 1000)
    # 24 concurrent refunds of 70 = 1680 asked for 1000 captured: at most 14 can succeed.
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(
            pool.map(lambda _: platform.refund(payment["payment_no"], {"amount": 70}), range(24))
        )
    codes = [status for status, _, _ in results]
    assert set(codes) <= {201, 422}, codes
    succeeded = codes.count(201)
    assert succeeded == 14
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["refunded_amount"] == 70 * succeeded <= 1000
    assert sum(r["amount"] for r in got["refunds"]) == got["refunded_amount"]
    intent = next(i for i in platform.intents() if i["id"] == payment["channel_reference"])
    assert sum(r["amount"] for r in intent["refunds"]) == got["refunded_amount"]
    # The remainder (20) is still refundable, exactly.
    assert platform.refund(payment["payment_no"], {"amount": 21})[0] == 422
    assert platform.refund(payment["payment_no"], {"amount": 20})[1]["payment_status"] == "refunded"
