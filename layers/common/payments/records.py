"""Stored records and the workflow's values, and how they cross JSON boundaries.

Payments, refunds, orders, statuses, risk assessments and failures are frozen msgspec
Structs, converted from and to JSON-shaped data (DynamoDB items, task payloads) by
msgspec (`load`, `dump`). Only request bodies and query strings are validated by pydantic
(`payments.models`), so the functions that take no merchant request (the workflow tasks,
the reconciler) never import it: its import and first schema build cost about half of
`import boto3` + a client (README, cold start).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, TypeVar

import msgspec
import msgspec.json
import msgspec.structs

__all__ = [
    "REFUNDABLE_STATUSES",
    "CustomerInfo",
    "Failure",
    "Order",
    "OrderStatus",
    "Payment",
    "PaymentStatus",
    "Reconciliation",
    "Record",
    "Refund",
    "RefundStatus",
    "RiskAssessment",
    "RiskDecision",
    "dump",
    "dump_json",
    "invalid_field",
    "load",
    "load_json",
    "replace",
]

RecordT = TypeVar("RecordT")


def replace(record: RecordT, **changes: Any) -> RecordT:
    """`record` with `changes` (a new record: records are frozen)."""
    return msgspec.structs.replace(record, **changes)  # type: ignore[type-var]


def load(kind: type[RecordT], data: object) -> RecordT:
    """`data` (parsed JSON, a DynamoDB item) as a `kind`; unknown keys are ignored, types
    are strict (a string is never taken for a number). Raises msgspec.ValidationError."""
    return msgspec.convert(data, kind)


def load_json(kind: type[RecordT], text: str | bytes) -> RecordT:
    """`load` of a JSON document."""
    return msgspec.json.decode(text, type=kind)


def invalid_field(error: msgspec.ValidationError) -> tuple[str, str]:
    """(top-level field, message) of a conversion error: "Expected `int` >= 1 - at
    `$.retries[0]`" -> ("retries", "Expected `int` >= 1"); the field is "" when the error
    is not about one field."""
    message, _, path = str(error).partition(" - at `$.")
    return path.rstrip("`").partition(".")[0].partition("[")[0], message


def dump(record: object) -> dict[str, Any]:
    """A record as JSON-shaped data: enums by value, every field (None included)."""
    data: dict[str, Any] = msgspec.to_builtins(record)
    return data


def dump_json(record: object) -> str:
    """`dump` as a JSON document."""
    return msgspec.json.encode(record).decode()


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the records: frozen, keyword-only, and a repr that leaves out `_unshown`
    (card tokens, contact details, request fingerprints never reach a log line).

    msgspec Structs rather than dataclasses: defining one costs a tenth of a dataclass
    (about 0.5 M instructions against 5 M), and each function's cold start defines all of
    them."""

    _unshown: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__struct_fields__
            if name not in self._unshown
        )
        return f"{type(self).__name__}({shown})"


class PaymentStatus(StrEnum):
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    PENDING_REVIEW = "pending_review"
    RISK_REJECTED = "risk_rejected"
    FAILED = "failed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


REFUNDABLE_STATUSES = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED})


class OrderStatus(StrEnum):
    CREATED = "created"
    PAID = "paid"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class RefundStatus(StrEnum):
    PENDING = "pending"  # the provider's answer is unknown; the amount stays reserved
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RiskDecision(StrEnum):
    APPROVE = "approve"
    REVIEW = "review"
    REJECT = "reject"


class RiskAssessment(Record, frozen=True, kw_only=True):
    decision: RiskDecision
    score: int  # 0..100 (logic.risk caps it)
    reasons: list[str] = msgspec.field(default_factory=list)


class Failure(Record, frozen=True, kw_only=True):
    """Why a step did not succeed: a stable code, and when a retry can succeed (seconds)."""

    code: str
    retry_after: int | None = None
    message: str = ""


class CustomerInfo(Record, frozen=True, kw_only=True):
    """A payment's customer as the gateway validated it (`models.Customer`)."""

    _unshown = frozenset({"email", "ip"})

    id: str | None = None
    email: str | None = None
    ip: str | None = None
    country: str | None = None


class Order(Record, frozen=True, kw_only=True):
    order_no: str
    payment_no: str
    merchant_id: str
    merchant_order_no: str
    amount: int
    currency: str
    status: OrderStatus
    created_at: str
    updated_at: str

    def public(self) -> dict[str, Any]:
        return {
            "order_no": self.order_no,
            "payment_no": self.payment_no,
            "merchant_order_no": self.merchant_order_no,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status.value,
        }


class Reconciliation(Record, frozen=True, kw_only=True):
    """What the reconciler has learnt about an unresolved payment or refund so far."""

    attempts: int = 0
    first_miss_at: str | None = None  # first lookup that found nothing at the provider
    next_at: str | None = None  # not looked at again before this time
    exhausted: bool = False  # retry budget spent: left for an operator, counted, alerted


class Payment(Record, frozen=True, kw_only=True):
    """A stored payment. `refundable_amount` is the authority for refunds."""

    _unshown = frozenset({"payment_method", "request_fingerprint"})

    payment_no: str
    merchant_id: str
    merchant_order_no: str
    order_no: str | None = None
    status: PaymentStatus
    amount: int
    currency: str
    channel: str
    payment_method: str
    customer: CustomerInfo | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None
    risk: RiskAssessment | None = None
    channel_reference: str | None = None
    refunded_amount: int = 0
    refundable_amount: int = 0
    failure_code: str | None = None
    created_at: str
    updated_at: str
    trace_id: str = ""
    # The request's W3C traceparent: reconciliation spans link back to it.
    trace_parent: str | None = None
    # Hash of (merchant, Idempotency-Key, body): a re-run of the same request finds its payment.
    request_fingerprint: str | None = None
    reconciliation: Reconciliation | None = None
    # A charge the provider made after the payment was settled failed (refunded or flagged).
    late_charge: dict[str, str] | None = None

    def public(self, trace_id: str) -> dict[str, Any]:
        """The payment object of the merchant API (SPEC §2)."""
        return {
            "payment_no": self.payment_no,
            "merchant_order_no": self.merchant_order_no,
            "order_no": self.order_no,
            "status": self.status.value,
            "amount": self.amount,
            "currency": self.currency,
            "channel": self.channel,
            "risk": (
                {"decision": self.risk.decision.value, "score": self.risk.score}
                if self.risk
                else None
            ),
            "channel_reference": self.channel_reference,
            "refunded_amount": self.refunded_amount,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "trace_id": trace_id,
        }


class Refund(Record, frozen=True, kw_only=True):
    refund_no: str
    payment_no: str
    amount: int
    currency: str
    status: RefundStatus
    reason: str | None = None
    channel_reference: str | None = None
    failure_code: str | None = None
    created_at: str
    updated_at: str | None = None
    trace_parent: str | None = None
    reconciliation: Reconciliation | None = None
    # A charge the provider made after the payment was settled failed (refunded or flagged).
    late_charge: dict[str, str] | None = None

    def public(self) -> dict[str, Any]:
        return {
            "refund_no": self.refund_no,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status.value,
            "reason": self.reason,
            "created_at": self.created_at,
        }
