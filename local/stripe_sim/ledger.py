"""The simulator's state and the operations that change it.

Every function here runs under the simulator's lock. A write is split in two so that a
`hang` fault can show the in-progress object while the request sleeps: `begin` makes the
object visible in its in-progress state (PaymentIntent `processing`, Refund `pending`), and
`complete` moves it to its final state and returns the response.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from local.stripe_sim import forms, objects
from local.stripe_sim.errors import Json, StripeError, invalid, no_such, unexpected_state
from local.stripe_sim.store import Collection

SUCCEED = frozenset({"pm_card_visa", "pm_card_mastercard", "pm_card_refundFail"})
DECLINES = {
    "pm_card_chargeDeclined": ("card_declined", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("card_declined", "insufficient_funds"),
}
REFUND_FAILS = frozenset({"pm_card_refundFail"})
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
CANCEL_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer", "abandoned"})
CANCELABLE = frozenset(
    {"requires_payment_method", "requires_confirmation", "requires_action", "requires_capture"}
)
CONFIRMABLE = frozenset({"requires_payment_method", "requires_confirmation"})
_CURRENCY = re.compile(r"[a-z]{3}")


@dataclass(frozen=True)
class Call:
    """The API request an operation belongs to (events name it in `request`)."""

    request_id: str
    idempotency_key: str | None


@dataclass
class KeyRecord:
    fingerprint: tuple[str, tuple[tuple[str, str], ...]]
    request_id: str
    saved: tuple[int, str, str | None] | None = None  # (status, body, Stripe-Should-Retry)


class Operation(Protocol):
    def begin(self, in_progress: bool) -> None: ...

    def complete(self) -> tuple[int, Json]: ...


class Ledger:
    """Everything /_sim/reset forgets: objects, events and idempotency keys."""

    def __init__(self, clock: Callable[[], float], deliver: Callable[[Json], bool]) -> None:
        self.intents = Collection("payment_intent", clock, searchable=True)
        self.charges = Collection("charge", clock)
        self.refunds = Collection("refund", clock)
        self.events = Collection("event", clock)
        self.refunds_of: dict[str, list[Json]] = {}
        self.keys: dict[tuple[str, str], KeyRecord] = {}
        self.active = True  # False once reset: late completions must not send webhooks
        self._deliver = deliver

    def emit(self, type_: str, obj: Json, call: Call, previous: Json | None = None) -> None:
        event = objects.event(
            type_,
            obj,
            request_id=call.request_id,
            idempotency_key=call.idempotency_key,
            previous_attributes=previous,
        )
        self.events.add(event)
        if self.active:
            self.deliver(event)

    def deliver(self, event: Json) -> bool:
        event["pending_webhooks"] += 1
        if self._deliver(copy.deepcopy(event)):
            return True
        event["pending_webhooks"] -= 1
        return False

    def settled(self, event_id: str) -> None:
        event = self.events.get(event_id)
        if event is not None and event["pending_webhooks"] > 0:
            event["pending_webhooks"] -= 1

    def intent(self, intent_id: str, *, status: int = 400, param: str = "intent") -> Json:
        intent = self.intents.get(intent_id)
        if intent is None:
            raise no_such("payment_intent", intent_id, param=param, status=status)
        return intent

    def related_values(self, ids: Iterable[str]) -> list[str]:
        """Metadata of the objects a request names, so a fault can `match` on it."""
        values: list[str] = []
        for value in ids:
            obj = self.intents.get(value) or self.charges.get(value) or self.refunds.get(value)
            if obj is None:
                continue
            values += obj.get("metadata", {}).values()
            intent = self.intents.get(str(obj.get("payment_intent")))
            if intent is not None:
                values += intent["metadata"].values()
        return values


class FailedOp:
    """An error an endpoint raised while executing: saved under the key like any result."""

    def __init__(self, error: StripeError) -> None:
        self._error = error

    def begin(self, in_progress: bool) -> None:
        return None

    def complete(self) -> tuple[int, Json]:
        return self._error.status, self._error.body


# ---- PaymentIntents ------------------------------------------------------------------


def _payment_method(params: Json, required: bool) -> str | None:
    pm = forms.string(params, "payment_method", required=required)
    if pm is not None and pm not in SUCCEED and pm not in DECLINES:
        raise no_such("PaymentMethod", pm, param="payment_method")
    return pm


class ConfirmIntent:
    """Charging an intent: create+confirm, or /confirm."""

    def __init__(self, ledger: Ledger, call: Call, intent: Json | None, fields: Json) -> None:
        self.ledger, self.call, self.intent, self.fields = ledger, call, intent, fields
        self.confirm = True

    def begin(self, in_progress: bool) -> None:
        if self.intent is None:  # create
            self.intent = self.ledger.intents.add(objects.payment_intent(**self.fields))
            self.ledger.refunds_of[self.intent["id"]] = []
            self.ledger.emit("payment_intent.created", self.intent, self.call)
        elif self.fields.get("payment_method"):
            self.intent["payment_method"] = self.fields["payment_method"]
            self.ledger.intents.changed(self.intent["id"])
        if self.confirm and in_progress:
            self._start_charge()
            self.intent["status"] = "processing"
            self.ledger.intents.changed(self.intent["id"])
            self.ledger.emit("payment_intent.processing", self.intent, self.call)

    def complete(self) -> tuple[int, Json]:
        intent = self.intent
        assert intent is not None, "begin() runs first"
        if not self.confirm:
            return 200, copy.deepcopy(intent)
        if intent["status"] not in CONFIRMABLE | {"processing"}:  # changed while we slept
            return _state_error(intent, "confirm", CONFIRMABLE)
        if intent["status"] != "processing":
            self._start_charge()
        return self._finish_charge(intent)

    def _start_charge(self) -> None:
        assert self.intent is not None
        charge = self.ledger.charges.add(objects.charge(self.intent))
        self.intent["latest_charge"] = charge["id"]
        self.intent["last_payment_error"] = None

    def _finish_charge(self, intent: Json) -> tuple[int, Json]:
        charge = self.ledger.charges.get(intent["latest_charge"])
        assert charge is not None
        pm = intent["payment_method"]
        if pm in DECLINES:
            code, decline_code = DECLINES[pm]
            error = objects.card_error(intent, code, decline_code)
            intent.update(status="requires_payment_method", last_payment_error=error)
            charge.update(
                status="failed",
                failure_code=code,
                failure_message=error["message"],
                outcome={"type": "issuer_declined", "reason": decline_code},
            )
            self.ledger.intents.changed(intent["id"])
            self.ledger.emit("payment_intent.payment_failed", intent, self.call)
            return 402, {"error": {**error, "payment_intent": copy.deepcopy(intent)}}
        intent.update(status="succeeded", amount_received=intent["amount"])
        charge.update(
            status="succeeded",
            paid=True,
            captured=True,
            amount_captured=intent["amount"],
            balance_transaction=objects.new_id("txn"),
            outcome={"type": "authorized", "reason": None},
        )
        self.ledger.intents.changed(intent["id"])
        self.ledger.emit("payment_intent.succeeded", intent, self.call)
        return 200, copy.deepcopy(intent)


def create_intent(ledger: Ledger, call: Call, params: Json, _id: str | None) -> Operation:
    forms.reject_unknown(
        params,
        {
            "amount",
            "currency",
            "payment_method",
            "confirm",
            "payment_method_types",
            "metadata",
            "description",
            "receipt_email",
            "statement_descriptor_suffix",
        },
    )
    amount = forms.positive_int(params, "amount")
    currency = (forms.string(params, "currency", required=True) or "").lower()
    if not _CURRENCY.fullmatch(currency):
        raise invalid(
            "Invalid currency: must be a three-letter ISO code.",
            code="parameter_invalid",
            param="currency",
        )
    confirm = forms.boolean(params, "confirm")
    fields: Json = {
        "amount": amount,
        "currency": currency,
        "metadata": forms.metadata(params),
        "description": forms.string(params, "description"),
        "payment_method_types": forms.string_list(params, "payment_method_types") or ["card"],
        "payment_method": _payment_method(params, required=confirm),
    }
    op = ConfirmIntent(ledger, call, None, fields)
    op.confirm = confirm
    return op


def confirm_intent(ledger: Ledger, call: Call, params: Json, intent_id: str | None) -> Operation:
    forms.reject_unknown(params, {"payment_method"})
    intent = ledger.intent(str(intent_id), status=404)
    pm = _payment_method(params, required=intent["payment_method"] is None)
    if intent["status"] not in CONFIRMABLE:
        raise _state_exception(intent, "confirm", CONFIRMABLE)
    return ConfirmIntent(ledger, call, intent, {"payment_method": pm})


class CancelIntent:
    def __init__(self, ledger: Ledger, call: Call, intent: Json, reason: str | None) -> None:
        self.ledger, self.call, self.intent, self.reason = ledger, call, intent, reason

    def begin(self, in_progress: bool) -> None:
        return None

    def complete(self) -> tuple[int, Json]:
        if self.intent["status"] not in CANCELABLE:  # changed while we slept
            return _state_error(self.intent, "cancel", CANCELABLE)
        self.intent.update(
            status="canceled", canceled_at=objects.now(), cancellation_reason=self.reason
        )
        self.ledger.intents.changed(self.intent["id"])
        self.ledger.emit("payment_intent.canceled", self.intent, self.call)
        return 200, copy.deepcopy(self.intent)


def cancel_intent(ledger: Ledger, call: Call, params: Json, intent_id: str | None) -> Operation:
    forms.reject_unknown(params, {"cancellation_reason"})
    reason = forms.choice(params, "cancellation_reason", CANCEL_REASONS)
    intent = ledger.intent(str(intent_id), status=404)
    if intent["status"] not in CANCELABLE:
        raise _state_exception(intent, "cancel", CANCELABLE)
    return CancelIntent(ledger, call, intent, reason)


def _state_exception(intent: Json, verb: str, allowed: Iterable[str]) -> StripeError:
    return unexpected_state(
        f"You cannot {verb} this PaymentIntent because it has a status of "
        f"{intent['status']}. Only a PaymentIntent with one of the following statuses may be "
        f"{verb}ed: {', '.join(sorted(allowed))}.",
        code="payment_intent_unexpected_state",
    )


def _state_error(intent: Json, verb: str, allowed: Iterable[str]) -> tuple[int, Json]:
    error = _state_exception(intent, verb, allowed)
    return error.status, error.body


# ---- Refunds -------------------------------------------------------------------------


class CreateRefund:
    def __init__(self, ledger: Ledger, call: Call, intent: Json, fields: dict[str, Any]) -> None:
        self.ledger, self.call, self.intent, self.fields = ledger, call, intent, fields
        self.refund: Json | None = None

    def begin(self, in_progress: bool) -> None:
        if in_progress:  # a pending refund holds its amount: concurrent refunds can't exceed
            self.refund = self._add("pending")
            self.ledger.emit("refund.created", self.refund, self.call)

    def complete(self) -> tuple[int, Json]:
        fails = self.intent["payment_method"] in REFUND_FAILS
        status = "failed" if fails else "succeeded"
        refund = self.refund
        if refund is None:
            refund = self._add(status)
            _finalise(refund, status)
            self.ledger.emit("refund.created", refund, self.call)
        else:
            _finalise(refund, status)
            self.ledger.emit("refund.updated", refund, self.call, {"status": "pending"})
        if fails:
            self.ledger.emit("refund.failed", refund, self.call)
        else:
            self._refund_charge(refund["amount"])
        return 200, copy.deepcopy(refund)

    def _add(self, status: str) -> Json:
        refund = objects.refund(self.intent, status=status, **self.fields)
        self.ledger.refunds.add(refund)
        self.ledger.refunds_of[self.intent["id"]].append(refund)
        return refund

    def _refund_charge(self, amount: int) -> None:
        charge = self.ledger.charges.get(self.intent["latest_charge"])
        assert charge is not None
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        self.ledger.emit("charge.refunded", charge, self.call)


def _finalise(refund: Json, status: str) -> None:
    refund["status"] = status
    if status == "failed":
        refund["failure_reason"] = "declined"
        refund["failure_balance_transaction"] = objects.new_id("txn")
    else:
        refund["balance_transaction"] = objects.new_id("txn")


def create_refund(ledger: Ledger, call: Call, params: Json, _id: str | None) -> Operation:
    forms.reject_unknown(params, {"payment_intent", "charge", "amount", "reason", "metadata"})
    amount = forms.positive_int(params, "amount", required=False)
    reason = forms.choice(params, "reason", REFUND_REASONS)
    metadata = forms.metadata(params)
    intent = _refund_target(ledger, params)
    amount = _refundable(ledger, intent, amount)
    fields = {"amount": amount, "reason": reason, "metadata": metadata}
    return CreateRefund(ledger, call, intent, fields)


def _refund_target(ledger: Ledger, params: Json) -> Json:
    if (pi := forms.string(params, "payment_intent")) is not None:
        return ledger.intent(pi, param="payment_intent")
    if (ch := forms.string(params, "charge")) is not None:
        charge = ledger.charges.get(ch)
        if charge is None:
            raise no_such("charge", ch, param="charge")
        return ledger.intent(charge["payment_intent"])
    raise invalid(
        "One of charge or payment_intent is required.",
        code="parameter_missing",
        param="payment_intent",
    )


def _refundable(ledger: Ledger, intent: Json, amount: int | None) -> int:
    if intent["status"] != "succeeded":
        raise unexpected_state(
            f"PaymentIntent {intent['id']} does not have a successful charge to refund.",
            code="charge_not_refundable",
        )
    held = sum(r["amount"] for r in ledger.refunds_of[intent["id"]] if r["status"] != "failed")
    remaining = int(intent["amount_received"]) - held
    if remaining <= 0:
        raise unexpected_state(
            f"Charge {intent['latest_charge']} has already been refunded.",
            code="charge_already_refunded",
        )
    if amount is not None and amount > remaining:
        raise unexpected_state(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
            code="amount_too_large",
            param="amount",
        )
    return remaining if amount is None else amount
