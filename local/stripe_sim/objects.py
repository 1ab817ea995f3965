"""Stripe objects as the API returns them (the fields Stripe has; unused ones are null)."""

from __future__ import annotations

import copy
import secrets
import time
from typing import Any

from local.stripe_sim.errors import Json

API_VERSION = "2024-06-20"
CARD_ERROR_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def payment_intent(
    *,
    amount: int,
    currency: str,
    payment_method: str | None,
    payment_method_types: list[str],
    metadata: dict[str, str],
    description: str | None,
) -> Json:
    intent_id = new_id("pi")
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
        "confirmation_method": "automatic",
        "created": now(),
        "currency": currency,
        "customer": None,
        "description": description,
        "invoice": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": metadata,
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": payment_method,
        "payment_method_options": {},
        "payment_method_types": payment_method_types,
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_confirmation" if payment_method else "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }


def charge(intent: Json) -> Json:
    return {
        "id": new_id("ch"),
        "object": "charge",
        "amount": intent["amount"],
        "amount_captured": 0,
        "amount_refunded": 0,
        "balance_transaction": None,
        "captured": False,
        "created": now(),
        "currency": intent["currency"],
        "description": intent["description"],
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": copy.deepcopy(intent["metadata"]),
        "outcome": None,
        "paid": False,
        "payment_intent": intent["id"],
        "payment_method": intent["payment_method"],
        "refunded": False,
        "status": "pending",
    }


def card_error(intent: Json, code: str, decline_code: str) -> Json:
    """The error Stripe reports for a declined confirmation (also last_payment_error)."""
    return {
        "type": "card_error",
        "code": code,
        "decline_code": decline_code,
        "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
        "message": CARD_ERROR_MESSAGES.get(decline_code, "Your card was declined."),
        "charge": intent["latest_charge"],
        "payment_method": {"id": intent["payment_method"], "object": "payment_method"},
    }


def refund(
    intent: Json, *, amount: int, reason: str | None, metadata: dict[str, str], status: str
) -> Json:
    return {
        "id": new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": None,
        "charge": intent["latest_charge"],
        "created": now(),
        "currency": intent["currency"],
        "destination_details": None,
        "failure_balance_transaction": None,
        "failure_reason": None,
        "metadata": metadata,
        "next_action": None,
        "payment_intent": intent["id"],
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }


def event(
    type_: str,
    obj: Json,
    *,
    request_id: str | None,
    idempotency_key: str | None,
    previous_attributes: dict[str, Any] | None = None,
) -> Json:
    data: Json = {"object": copy.deepcopy(obj)}
    if previous_attributes:
        data["previous_attributes"] = previous_attributes
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": now(),
        "data": data,
        "livemode": False,
        "pending_webhooks": 0,
        "request": {"id": request_id, "idempotency_key": idempotency_key},
        "type": type_,
    }
