"""SPEC §2 outcomes over real HTTP against `python -m local.stack`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from typing import Any

import pytest
import requests

from tests.e2e.conftest import ROOT, Stack, start, stop

pytestmark = pytest.mark.e2e
TRACE = re.compile(r"^[0-9a-f]{32}$")


def _body(**kw: Any) -> dict[str, Any]:
    body = {
        "merchant_order_no": f"e2e-{uuid.uuid4().hex[:12]}",
        "amount": 1999,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "customer": {"id": f"cus_{uuid.uuid4().hex[:8]}", "country": "US"},
    }
    body.update(kw)
    return body


def _check_trace(response: requests.Response) -> None:
    trace_id = response.headers["X-Trace-ID"]
    assert TRACE.match(trace_id)
    if response.headers.get("Content-Type", "").startswith("application/json"):
        assert response.json().get("trace_id", trace_id) == trace_id


def test_payment_lifecycle_over_http(stack: Stack) -> None:
    created = stack.request("POST", "/api/v1/payments", _body(amount=1999))
    _check_trace(created)
    assert created.status_code == 201, created.text
    payment = created.json()
    got = stack.request("GET", f"/api/v1/payments/{payment['payment_no']}")
    assert got.status_code == 200 and got.json()["status"] == "succeeded"
    order = stack.request("GET", f"/api/v1/orders/{payment['order_no']}")
    assert order.status_code == 200 and order.json()["status"] == "paid"
    path = f"/api/v1/payments/{payment['payment_no']}/refunds"
    partial = stack.request("POST", path, {"amount": 500})
    assert partial.status_code == 201 and partial.json()["payment_status"] == "partially_refunded"
    too_much = stack.request("POST", path, {"amount": 1500})
    assert too_much.status_code == 422 and too_much.json()["error"]["code"] == "amount_exceeded"
    rest = stack.request("POST", path, {"amount": 1499})
    assert rest.status_code == 201 and rest.json()["payment_status"] == "refunded"
    again = stack.request("POST", path, {"amount": 1})
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_status"
    for response in (got, order, partial, too_much, rest, again):
        _check_trace(response)


@pytest.mark.parametrize(
    ("overrides", "status", "code", "payment_status"),
    [
        ({"customer": {"id": "cus_x", "country": "KP"}}, 402, "risk_rejected", "risk_rejected"),
        ({"amount": 750_000}, 202, None, "pending_review"),
        ({"payment_method": "pm_card_chargeDeclined"}, 402, "channel_declined", "failed"),
        ({"currency": "XXX"}, 400, "unsupported_currency", None),
        ({"channel": "paypal"}, 400, "unsupported_channel", None),
        ({"amount": 10.5}, 400, "invalid_amount", None),
        ({"amount": "100"}, 400, "invalid_amount", None),
        ({"merchant_order_no": "bad order no"}, 400, "invalid_request", None),
    ],
)
def test_create_outcomes(
    stack: Stack,
    overrides: dict[str, Any],
    status: int,
    code: str | None,
    payment_status: str | None,
) -> None:
    response = stack.request("POST", "/api/v1/payments", _body(**overrides))
    _check_trace(response)
    assert response.status_code == status, response.text
    body = response.json()
    if code:
        assert body["error"]["code"] == code
    if payment_status:
        assert body["status"] == payment_status


def test_duplicate_order_is_409(stack: Stack) -> None:
    body = _body()
    assert stack.request("POST", "/api/v1/payments", body).status_code == 201
    second = stack.request("POST", "/api/v1/payments", {**body, "amount": 5})
    assert second.status_code == 409 and second.json()["error"]["code"] == "duplicate_order"


def test_idempotent_replay_and_key_reuse(stack: Stack) -> None:
    key = {"Idempotency-Key": f"e2e-{uuid.uuid4().hex}"}
    body = _body()
    first = stack.request("POST", "/api/v1/payments", body, headers=key)
    second = stack.request("POST", "/api/v1/payments", body, headers=key)
    assert first.status_code == second.status_code == 201
    strip = lambda b: {k: v for k, v in b.items() if k != "trace_id"}  # noqa: E731
    assert strip(first.json()) == strip(second.json())
    payment_no = first.json()["payment_no"]
    charges = [i for i in stack.intents() if i.get("metadata", {}).get("payment_no") == payment_no]
    assert len(charges) == 1, "a replay must never charge twice"
    reused = stack.request("POST", "/api/v1/payments", _body(), headers=key)
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"


def test_channel_unavailable_is_503(stack: Stack) -> None:
    stack.fault("rate_limit")  # 429 on every attempt: the request provably never ran
    try:
        response = stack.request("POST", "/api/v1/payments", _body())
    finally:
        stack.fault("none")
    _check_trace(response)
    assert response.status_code == 503 and response.json()["error"]["code"] == "channel_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def test_provider_500_is_202_processing_never_a_failure(stack: Stack) -> None:
    stack.fault("error")
    try:
        response = stack.request("POST", "/api/v1/payments", _body())
    finally:
        stack.fault("none")
    _check_trace(response)
    assert response.status_code == 202 and response.json()["status"] == "processing"


def test_bad_requests(stack: Stack) -> None:
    unsigned = requests.post(f"{stack.api}/api/v1/payments", json=_body(), timeout=10)
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "unauthorized"
    _check_trace(unsigned)
    wrong = stack.request("POST", "/api/v1/payments", _body(), secret="nope")
    assert wrong.status_code == 401
    malformed = stack.request("POST", "/api/v1/payments", b"{oops")
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_request"
    big = stack.request("POST", "/api/v1/payments", _body(description="x" * 40_000))
    assert big.status_code == 413
    missing = stack.request("GET", "/api/v1/payments/pay_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    unknown = stack.request("GET", "/api/v1/unknown")
    assert unknown.status_code == 404
    _check_trace(unknown)
    wrong_method = stack.request("DELETE", "/api/v1/payments")
    assert wrong_method.status_code == 405
    health = requests.get(f"{stack.api}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    _check_trace(health)


def test_sigterm_stops_cleanly_and_restart_works(tmp_path: Any) -> None:
    first = start(tmp_path)
    assert stop(first) == 0
    second = start(tmp_path)
    try:
        assert requests.get(f"{second.api}/health", timeout=5).status_code == 200
    finally:
        assert stop(second) == 0


def _payctl(stack: Stack, *args: str) -> tuple[int, str]:
    env = {**os.environ, "PAYMENTS_URL": stack.api}
    done = subprocess.run(
        [str(ROOT / "bin" / "payctl"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_payctl_walkthrough(stack: Stack) -> None:
    code, out = _payctl(stack, "pay", "--amount", "1999", "--currency", "USD")
    assert code == 0 and out.startswith("HTTP 201"), out
    trace_id = out.split("X-Trace-ID: ")[1].split()[0]
    payment = json.loads(out.split("\n", 1)[1])
    code, out = _payctl(stack, "refund", payment["payment_no"], "--amount", "500")
    assert code == 0 and '"partially_refunded"' in out
    code, out = _payctl(stack, "refund", payment["payment_no"], "--amount", "1500")
    assert code == 1 and out.startswith("HTTP 422") and "amount_exceeded" in out
    code, out = _payctl(stack, "get", payment["payment_no"])
    assert code == 0 and '"refunded_amount": 500' in out
    code, out = _payctl(stack, "trace", trace_id, "--file", str(stack.traces))
    assert code == 0, out
    assert (
        "payment-gateway: POST /api/v1/payments" in out
        and "stripe: POST /v1/payment_intents" in out
    )
