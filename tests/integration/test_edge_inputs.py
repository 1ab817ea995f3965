"""Hostile input through the real handlers: the documented 4xx, nothing stored, nothing charged.

Each case here was a 5xx or a silent misreading before (issue 11): an empty metadata key
that was charged and then made the payment unreadable, a non-ASCII signature byte, 5,000
levels of nesting, a repeated amount key, a non-JSON Content-Type, a refund above 10^11.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import Platform
from tests.support import api_event, payment_body

CREATE = ("POST", "/api/v1/payments")


@pytest.fixture
def unchanged(platform: Platform) -> Iterator[None]:
    """The test's requests store nothing and charge nothing."""
    items, intents = platform.count_items(), len(platform.intents())
    yield
    assert platform.count_items() == items
    assert len(platform.intents()) == intents


def _create(platform: Platform, body: Any, **kw: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    return platform.call("CreatePaymentFunction", api_event(*CREATE, body=body, **kw))


def _assert_error(status: int, body: dict[str, Any], headers: dict[str, str], code: str) -> None:
    assert body["error"]["code"] == code, (status, body)
    assert body["trace_id"] == headers["X-Trace-ID"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (json.dumps(payment_body(metadata={"": "x"})), 400, "invalid_request"),
        (json.dumps(payment_body(metadata={"k" * 41: "x"})), 400, "invalid_request"),
        ('{"a":' * 5000 + "1" + "}" * 5000, 400, "invalid_request"),
        ("[" * 33 + "]" * 33, 400, "invalid_request"),
        (json.dumps(payment_body(amount=1))[:-1] + ', "amount": 600000}', 400, "invalid_request"),
        (json.dumps(payment_body(description="x" * 40_000)), 413, "payload_too_large"),
    ],
)
def test_bad_bodies_are_refused_before_anything_happens(
    platform: Platform, raw: str, status: int, code: str
) -> None:
    got, body, headers = _create(platform, raw)
    assert got == status
    _assert_error(got, body, headers, code)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_non_json_content_type_is_415(platform: Platform, content_type: str) -> None:
    got, body, headers = _create(platform, payment_body(), headers={"content-type": content_type})
    assert got == 415
    _assert_error(got, body, headers, "unsupported_media_type")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "auth",
    [
        {"x-signature": "\u00e9" * 64},
        {"x-signature": "zz"},
        {"x-api-key": "mk_d\u00e9mo"},
        {"x-api-key": "k" * 3000},  # past DynamoDB's 2 KiB key limit: was never looked up
        {"x-timestamp": "\u0661\u0667\u0660\u0660"},
        {"x-timestamp": ""},
    ],
)
def test_malformed_auth_headers_are_401(platform: Platform, auth: dict[str, str]) -> None:
    got, body, headers = _create(platform, payment_body(), headers=auth)
    assert got == 401
    _assert_error(got, body, headers, "unauthorized")
    assert body["error"]["message"] == "Authentication failed."


@pytest.mark.usefixtures("unchanged")
def test_all_invalid_fields_in_one_response(platform: Platform) -> None:
    got, body, _ = _create(
        platform,
        payment_body(amount=10.5, currency="XXX", merchant_order_no="a b", metadata={"": "x"}),
    )
    assert got == 400 and body["error"]["code"] == "invalid_amount"
    fields = {d["field"] for d in body["error"]["details"]}
    assert fields == {"amount", "currency", "merchant_order_no", 'metadata.""'}


@pytest.mark.parametrize("path_id", ["x" * 3000, "pay_%00", "..", "pay_\u00e9"])
def test_odd_identifiers_in_paths_are_404_after_authentication(
    platform: Platform, path_id: str
) -> None:
    status, body, _ = platform.get_payment(path_id)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = platform.get_payment(path_id, signed=False)
    assert status == 401


def test_refund_above_any_refundable_amount_is_422_and_changes_nothing(
    platform: Platform,
) -> None:
    status, payment, _ = platform.pay(amount=1000)
    assert status == 201
    for amount in (10**11 + 1, 10**40):
        status, body, _ = platform.refund(payment["payment_no"], {"amount": amount})
        assert status == 422 and body["error"]["code"] == "amount_exceeded", body
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["refunded_amount"] == 0 and got["status"] == "succeeded" and got["refunds"] == []
    status, body, _ = platform.refund("pay_missing", {"amount": 10**40})
    assert status == 404  # the usual order: no such payment before "too much"


def test_refund_bodies_get_the_same_parsing(platform: Platform) -> None:
    status, payment, _ = platform.pay(amount=1000)
    cases = [
        ('{"amount": 1, "amount": 1000}', 400, "invalid_request"),
        ("[" * 40 + "]" * 40, 400, "invalid_request"),
    ]
    for raw, expected, code in cases:
        status, body, _ = platform.refund(payment["payment_no"], raw)
        assert (status, body["error"]["code"]) == (expected, code)
    path = f"/api/v1/payments/{payment['payment_no']}/refunds"
    event = api_event(
        "POST",
        "/api/v1/payments/{payment_no}/refunds",
        path=path,
        body={"amount": 1},
        path_params={"payment_no": payment["payment_no"]},
        headers={"content-type": "text/plain"},
    )
    status, body, _ = platform.call("RefundFunction", event)
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert got["refunded_amount"] == 0
