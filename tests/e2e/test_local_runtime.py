"""The local Lambda runtime as `make run` runs it: faults, concurrency, its own errors, REPORT."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e
TRACE = re.compile(r"^[0-9a-f]{32}$")


def _payment(order: str, amount: int = 2000) -> dict[str, Any]:
    return {
        "merchant_order_no": order,
        "amount": amount,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "customer": {"id": f"cus_{uuid.uuid4().hex[:8]}", "country": "US"},
    }


def _fault(stack: Stack, **spec: Any) -> dict[str, Any]:
    created = requests.post(f"{stack.api}/_local/faults", json=spec, timeout=5)
    assert created.status_code == 201, created.text
    return dict(created.json())


def _faults(stack: Stack) -> list[dict[str, Any]]:
    return list(requests.get(f"{stack.api}/_local/faults", timeout=5).json()["data"])


def _json_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert TRACE.match(body["trace_id"]) and response.headers["X-Trace-ID"] == body["trace_id"]


@pytest.fixture(autouse=True)
def _clear(stack: Stack) -> Any:
    requests.delete(f"{stack.api}/_local/faults", timeout=5)
    yield
    requests.delete(f"{stack.api}/_local/faults", timeout=5)


def test_a_gateway_killed_before_its_handler_is_a_json_500(stack: Stack) -> None:
    order = f"rt-{uuid.uuid4().hex[:12]}"
    fault = _fault(stack, function="CreatePaymentFunction", action="crash_before", match=order)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    other = stack.request("POST", "/api/v1/payments", _payment(f"rt-{uuid.uuid4().hex[:12]}"))
    assert other.status_code == 201  # another payment: not matched
    crashed = stack.request("POST", "/api/v1/payments", _payment(order), headers=key)
    _json_error(crashed, 500, "internal_error")
    (listed,) = _faults(stack)
    assert (listed["id"], listed["fired"], listed["remaining"]) == (fault["id"], 1, 0)
    retried = stack.request("POST", "/api/v1/payments", _payment(order), headers=key)
    assert retried.status_code == 201, retried.text  # nothing ran: the retry pays once


def test_the_gateway_dies_after_the_workflow_ran(stack: Stack) -> None:
    order = f"rt-{uuid.uuid4().hex[:12]}"
    _fault(
        stack,
        function="CreatePaymentFunction",
        action="crash_after",
        step="States.StartSyncExecution",
        match=order,
    )
    before = len(stack.intents())
    crashed = stack.request("POST", "/api/v1/payments", _payment(order))
    _json_error(crashed, 500, "internal_error")
    intents = stack.intents()
    assert len(intents) == before + 1  # the workflow charged the card...
    assert intents[-1]["status"] == "succeeded"  # ...and the gateway never answered
    assert _faults(stack)[0]["fired"] == 1


def test_twenty_concurrent_refunds(stack: Stack) -> None:
    created = stack.request("POST", "/api/v1/payments", _payment(f"rt-{uuid.uuid4().hex[:12]}"))
    assert created.status_code == 201, created.text
    path = f"/api/v1/payments/{created.json()['payment_no']}/refunds"
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: stack.request("POST", path, {"amount": 100}), range(20)))
    elapsed = time.monotonic() - began
    assert sorted(a.status_code for a in answers) == [201] * 20, [a.text for a in answers]
    assert elapsed < 20, f"20 concurrent refunds took {elapsed:.1f} s"
    payment = stack.request("GET", path.rsplit("/", 1)[0]).json()
    assert payment["refunded_amount"] == 2000 and payment["status"] == "refunded"


def test_emulator_errors_are_json_with_a_trace_id(stack: Stack) -> None:
    trace = uuid.uuid4().hex
    big = requests.get(
        f"{stack.api}/health",
        headers={"X-Big": "a" * 11000, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
        timeout=5,
    )
    _json_error(big, 431, "request_header_fields_too_large")
    assert big.headers["X-Trace-ID"] == trace
    huge = requests.get(f"{stack.api}/health", headers={"X-Huge": "a" * 70000}, timeout=5)
    _json_error(huge, 431, "request_header_fields_too_large")
    bad = requests.post(f"{stack.api}/_local/faults", json={"function": "Nope"}, timeout=5)
    _json_error(bad, 400, "invalid_request")


def test_report_lines_reach_the_stack_log(stack: Stack) -> None:
    stack.request("GET", "/health")
    log = (stack.traces.parent / "stack.log").read_text()
    reports = [line for line in log.splitlines() if line.startswith("REPORT RequestId: ")]
    assert reports
    assert any("\tInit Duration: " in line for line in reports)  # cold starts
    assert all("\tMax Memory Used: " in line for line in reports)
