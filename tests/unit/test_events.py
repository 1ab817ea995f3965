"""Sample events in events/: realistic shapes, valid signatures, payloads matching the ASL."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from payments.records import load
from payments.tasks import ChannelTaskInput, OrderTaskInput, TaskInput

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
ASL = ROOT / "statemachine" / "payment_workflow.asl.json"
SECRET = "sk_demo_secret"

API_EVENTS = {
    "create_payment_success.json": "POST /api/v1/payments",
    "create_payment_declined.json": "POST /api/v1/payments",
    "create_payment_invalid_currency.json": "POST /api/v1/payments",
    "get_payment.json": "GET /api/v1/payments/{payment_no}",
    "get_order.json": "GET /api/v1/orders/{order_no}",
    "health.json": "GET /health",
    "refund_partial.json": "POST /api/v1/payments/{payment_no}/refunds",
}
TASK_EVENTS = {
    "risk_check.json": "RiskCheck",
    "order_create.json": "CreateOrder",
    "order_mark_paid.json": "MarkOrderPaid",
    "order_cancel.json": "CancelOrder",
    "channel_payment.json": "ChannelPayment",
}
# The scheduled reconciler's event and a provider webhook (signed with the local secret).
OTHER_EVENTS = {
    "reconciler_scheduled.json": "ReconcilerFunction",
    "webhook_payment_intent_succeeded.json": "WebhookFunction",
}
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")


def _load_sign() -> ModuleType:
    spec = importlib.util.spec_from_file_location("events_sign", EVENTS / "sign.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sign_module = _load_sign()


def _load(name: str) -> dict[str, Any]:
    return dict(json.loads((EVENTS / name).read_text(encoding="utf-8")))


def _expected_signature(event: dict[str, Any], secret: str = SECRET) -> str:
    """The SPEC §2 formula, written out again here (not via events/sign.py)."""
    headers = event["headers"]
    message = (
        f"{headers['x-timestamp']}.{event['requestContext']['http']['method']}."
        f"{event['rawPath']}.{event.get('body') or ''}"
    )
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def test_every_event_file_is_known() -> None:
    found = {p.name for p in EVENTS.glob("*.json")}
    assert found == set(API_EVENTS) | set(TASK_EVENTS) | set(OTHER_EVENTS)


@pytest.mark.parametrize(("name", "route_key"), sorted(API_EVENTS.items()))
def test_api_event_shape(name: str, route_key: str) -> None:
    event = _load(name)
    method, route = route_key.split(" ", 1)
    assert event["version"] == "2.0"
    assert event["routeKey"] == route_key
    assert event["rawQueryString"] == ""
    assert event["isBase64Encoded"] is False
    assert all(key == key.lower() for key in event["headers"])
    context = event["requestContext"]
    for key in ("accountId", "apiId", "domainName", "requestId", "time", "timeEpoch"):
        assert context[key], key
    assert context["routeKey"] == route_key
    assert context["stage"] == "$default"
    assert context["http"]["method"] == method
    assert context["http"]["path"] == event["rawPath"]
    for key in ("protocol", "sourceIp", "userAgent"):
        assert context["http"][key], key
    # The path parameters fill the route template to give the raw path.
    params = event.get("pathParameters", {})
    assert set(re.findall(r"\{(\w+)\}", route)) == set(params)
    assert route.format(**params) == event["rawPath"]
    if method == "POST":
        assert isinstance(json.loads(event["body"]), dict)
        assert event["headers"]["content-type"] == "application/json"
        assert 1 <= len(event["headers"]["idempotency-key"]) <= 255
    else:
        assert not event.get("body")


def test_create_payment_bodies() -> None:
    success = json.loads(_load("create_payment_success.json")["body"])
    assert success["amount"] == 1999
    assert success["currency"] == "USD"
    assert success["payment_method"] == "pm_card_visa"
    assert success["merchant_order_no"] == "order-1001"
    assert success["customer"]["id"] == "cus_123"
    assert success["customer"]["email"] == "jane@example.com"
    assert success["customer"]["country"] == "US"
    declined = json.loads(_load("create_payment_declined.json")["body"])
    assert declined["payment_method"] == "pm_card_chargeDeclined"
    invalid = json.loads(_load("create_payment_invalid_currency.json")["body"])
    assert invalid["currency"] == "XXX"
    refund = json.loads(_load("refund_partial.json")["body"])
    assert refund == {"amount": 500, "reason": "requested_by_customer"}
    keys = {
        _load(n)["headers"]["idempotency-key"]
        for n in API_EVENTS
        if _load(n)["requestContext"]["http"]["method"] == "POST"
    }
    assert len(keys) == 4  # one idempotency key per distinct request


@pytest.mark.parametrize("name", sorted(API_EVENTS))
def test_stored_signature_matches_its_timestamp(name: str) -> None:
    event = _load(name)
    if name == "health.json":
        assert not {"x-api-key", "x-timestamp", "x-signature"} & set(event["headers"])
        return
    assert event["headers"]["x-api-key"] == "mk_demo"
    assert re.fullmatch(r"[0-9a-f]{64}", event["headers"]["x-signature"])
    assert hmac.compare_digest(_expected_signature(event), event["headers"]["x-signature"])


@pytest.mark.parametrize("name", sorted(API_EVENTS))
def test_resigned_event_verifies(name: str) -> None:
    event = _load(name)
    now = int(time.time())
    fresh = sign_module.resign_event(event, now=now)
    assert event == _load(name)  # the input is not mutated
    if "x-api-key" not in event["headers"]:
        assert fresh == event
        return
    assert fresh["headers"]["x-timestamp"] == str(now)
    assert fresh["requestContext"]["timeEpoch"] == now * 1000
    assert hmac.compare_digest(_expected_signature(fresh), fresh["headers"]["x-signature"])
    other = sign_module.resign_event(event, secret="another-secret", now=now)
    assert not hmac.compare_digest(_expected_signature(other), other["headers"]["x-signature"])


def test_resigned_event_is_accepted_by_the_platform() -> None:
    auth = pytest.importorskip("payments.auth")
    fresh = sign_module.resign_event(_load("create_payment_success.json"))
    headers = fresh["headers"]
    key = auth.ApiKey(key_id="mk_demo", merchant_id="merch_demo", secret=SECRET)
    merchant = auth.authenticate(
        key_id=headers["x-api-key"],
        timestamp=headers["x-timestamp"],
        signature=headers["x-signature"],
        method=fresh["requestContext"]["http"]["method"],
        path=fresh["rawPath"],
        body=fresh["body"].encode(),
        lookup=lambda key_id: key if key_id == "mk_demo" else None,
        tolerance_seconds=300,
    )
    assert merchant.merchant_id == "merch_demo"


def test_sign_formula() -> None:
    expected = hmac.new(b"s", b"1.POST./p.{}", hashlib.sha256).hexdigest()
    assert sign_module.sign("s", 1, "post", "/p", "{}") == expected
    assert sign_module.sign("s", "1", "POST", "/p", b"{}") == expected


def test_cli_rewrites_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "event.json"
    target.write_text((EVENTS / "get_payment.json").read_text(encoding="utf-8"), encoding="utf-8")
    assert sign_module.main([str(target), "--now", "1800000000"]) == 0
    event = json.loads(target.read_text(encoding="utf-8"))
    assert event["headers"]["x-timestamp"] == "1800000000"
    assert hmac.compare_digest(_expected_signature(event), event["headers"]["x-signature"])
    assert sign_module.main([str(target), "--stdout", "--now", "1800000001"]) == 0
    assert json.loads(capsys.readouterr().out)["headers"]["x-timestamp"] == "1800000001"
    assert json.loads(target.read_text(encoding="utf-8"))["headers"]["x-timestamp"] == "1800000000"


def _asl_payload_keys() -> dict[str, set[str]]:
    """Task step name -> the keys the ASL's Parameters.Payload gives the Lambda."""
    states = json.loads(ASL.read_text(encoding="utf-8"))["States"]
    keys: dict[str, set[str]] = {}
    for state in states.values():
        if state["Type"] != "Task":
            continue
        payload = state["Parameters"]["Payload"]
        step_keys = {k.removesuffix(".$") for k in payload}
        step = payload["step"]
        assert keys.get(step, step_keys) == step_keys
        keys[step] = step_keys
    return keys


@pytest.mark.parametrize(("name", "step"), sorted(TASK_EVENTS.items()))
def test_task_event_matches_asl_payload(name: str, step: str) -> None:
    event = _load(name)
    assert event["step"] == step
    assert set(event) == _asl_payload_keys()[step]
    assert TRACEPARENT.match(event["trace_context"]["traceparent"])
    payment = event["payment"]
    assert re.fullmatch(r"pay_[0-9a-f]{32}", payment["payment_no"])
    assert payment["merchant_id"] == "merch_demo"
    assert isinstance(payment["amount"], int) and not isinstance(payment["amount"], bool)
    assert payment["channel"] == "stripe"
    assert re.fullmatch(r"[A-Z]{3}", payment["currency"])
    assert set(payment["customer"]) >= {"id", "country"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", payment["created_at"])
    for key in ("merchant_order_no", "payment_method"):
        assert payment[key], key
    if "order" in event:
        assert re.fullmatch(r"ord_[0-9a-f]{32}", event["order"]["order_no"])
        assert event["order"]["status"] == "created"
    if "action" in event:
        expected_action = {
            "CreateOrder": "create",
            "MarkOrderPaid": "mark_paid",
            "CancelOrder": "cancel",
        }[step]
        assert event["action"] == expected_action
    # The handler's own contract model accepts it (what crosses the state machine).
    model = {"RiskCheck": TaskInput, "ChannelPayment": ChannelTaskInput}.get(step, OrderTaskInput)
    assert load(model, event).step == step


def test_task_events_cover_every_asl_step() -> None:
    assert set(TASK_EVENTS.values()) == set(_asl_payload_keys())


def test_the_webhook_sample_is_signed_as_stripe_signs() -> None:
    import stripe

    event = _load("webhook_payment_intent_succeeded.json")
    header = event["headers"]["stripe-signature"]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    # The official SDK's own verification, with the stored timestamp as "now".
    assert stripe.WebhookSignature.verify_header(
        event["body"], header, "whsec_local_secret", tolerance=time.time() - timestamp + 1
    )
    assert event["routeKey"] == "POST /webhooks/stripe"
    assert json.loads(event["body"])["data"]["object"]["metadata"]["payment_no"].startswith("pay_")


def test_the_scheduled_event_is_an_eventbridge_scheduler_event() -> None:
    event = _load("reconciler_scheduled.json")
    assert event["source"] == "aws.scheduler" and event["detail-type"] == "Scheduled Event"
