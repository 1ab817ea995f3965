"""What a sample event needs to exist before it runs in a fresh emulator (`make invoke`).

The files in events/ name payments and orders (pay_7f3c..., ord_7f3c...) that a fresh
emulator does not have, so GET payment/order, a refund, and MarkOrderPaid/CancelOrder
failed, and the provider webhook was "ignored" (its payment unknown). `seed(event, ...)`
creates exactly what the event names, through the platform's
own code: a payment is paid for through CreatePaymentFunction and the real workflow (so it
is charged at the Stripe simulator and can be refunded), with the event's payment number;
an order a workflow step works on is created by the CreateOrder logic, in `created` state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from unittest import mock

from local.events import api_event

Invoke = Callable[[str, dict[str, Any]], tuple[Any, dict[str, Any] | None]]

_PAYMENT_PATH = re.compile(r"^/api/v1/payments/(pay_[A-Za-z0-9]+)(?:/refunds)?/?$")
_ORDER_PATH = re.compile(r"^/api/v1/orders/ord_([A-Za-z0-9]+)/?$")
_STEPS_ON_AN_EXISTING_ORDER = frozenset({"mark_paid", "cancel"})
_WEBHOOK_PATH = "/webhooks/stripe"


class SeedError(RuntimeError):
    """The event's prerequisites could not be created (the message says which)."""


def seed(event: dict[str, Any], invoke: Invoke, *, key: str, secret: str) -> list[str]:
    """Create what `event` refers to; returns one line per thing created."""
    payment_no = _payment_named_by(event)
    if payment_no is not None:
        amount = max(1999, _refund_amount(event))
        return [_paid_payment(payment_no, amount, invoke, key=key, secret=secret)]
    if event.get("action") in _STEPS_ON_AN_EXISTING_ORDER and isinstance(
        event.get("payment"), dict
    ):
        return [_created_order(event["payment"])]
    return []


def _payment_named_by(event: dict[str, Any]) -> str | None:
    path = str(event.get("rawPath") or "")
    if match := _PAYMENT_PATH.match(path):
        return match.group(1)
    if match := _ORDER_PATH.match(path):  # an order number derives from its payment's
        return "pay_" + match.group(1)
    if path == _WEBHOOK_PATH:  # a provider event names our payment in its metadata
        metadata = _webhook_object(event).get("metadata")
        payment_no = metadata.get("payment_no") if isinstance(metadata, dict) else None
        return payment_no if isinstance(payment_no, str) and payment_no else None
    return None


def _webhook_object(event: dict[str, Any]) -> dict[str, Any]:
    """The `data.object` of a provider webhook event's body ({} when there is none)."""
    try:
        data = json.loads(event.get("body") or "{}").get("data")
    except (ValueError, AttributeError):
        return {}
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


def _refund_amount(event: dict[str, Any]) -> int:
    """The amount the event's body names (a refund's, or a webhook intent's); 0 if none."""
    try:
        body = json.loads(event.get("body") or "{}")
        amount = body.get("amount", 0)
    except (ValueError, AttributeError):
        return 0
    if event.get("rawPath") == _WEBHOOK_PATH:
        amount = _webhook_object(event).get("amount", 0)
    return amount if isinstance(amount, int) and not isinstance(amount, bool) else 0


def _paid_payment(payment_no: str, amount: int, invoke: Invoke, *, key: str, secret: str) -> str:
    from payments.logic import payments as payment_logic

    body = {
        "merchant_order_no": f"seed-{payment_no[-12:]}",
        "amount": amount,
        "currency": "USD",
        "payment_method": "pm_card_visa",
    }
    event = api_event("POST", "/api/v1/payments", body=body, key=key, secret=secret)
    # The real flow, with the payment number the event names instead of a random one.
    with mock.patch.object(payment_logic, "new_id", lambda _prefix: payment_no):
        result, error = invoke("CreatePaymentFunction", event)
    status = (result or {}).get("statusCode")
    if error is not None or status != 201:
        raise SeedError(f"could not create payment {payment_no}: {error or result}")
    order_no = json.loads(result["body"])["order_no"]
    return f"seeded payment {payment_no} ({amount} USD, succeeded) and order {order_no} (paid)"


def _created_order(payment: dict[str, Any]) -> str:
    from msgspec import ValidationError

    from payments.logic import orders
    from payments.records import load
    from payments.services import order_store
    from payments.tasks import TaskPayment

    try:
        order = orders.create(load(TaskPayment, payment), order_store())
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise SeedError(f"could not create the order of the event's payment: {exc}") from None
    return f"seeded order {order.order_no} (created)"
