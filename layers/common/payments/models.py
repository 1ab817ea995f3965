"""Domain and request models (pydantic v2). Amounts are integer minor units."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from payments import money
from payments.errors import InvalidRequest, UnsupportedChannel

SUPPORTED_CHANNELS = frozenset({"stripe"})

MerchantOrderNo = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
]
ShortText = Annotated[str, StringConstraints(max_length=500)]


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


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Customer(_Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    email: (
        Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None
    ) = None
    ip: Annotated[str, StringConstraints(max_length=45)] | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None


class CreatePaymentRequest(_Strict):
    merchant_order_no: MerchantOrderNo
    amount: int
    currency: str
    channel: str = "stripe"
    payment_method: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    customer: Customer | None = None
    description: ShortText | None = None
    metadata: dict[Annotated[str, StringConstraints(max_length=40)], ShortText] | None = Field(
        default=None, max_length=20
    )

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: object) -> int:
        return money.validate_amount(value)

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        money.exponent(value)
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if value not in SUPPORTED_CHANNELS:
            raise UnsupportedChannel(f"Channel {value!r} is not supported.")
        return value


class ListPaymentsQuery(_Strict):
    """GET /api/v1/payments query string (values arrive as strings)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    merchant_order_no: MerchantOrderNo | None = None
    status: PaymentStatus | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 10
    starting_after: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class RefundRequest(_Strict):
    amount: int
    reason: ShortText | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: object) -> int:
        return money.validate_amount(value)


class RiskAssessment(BaseModel):
    decision: RiskDecision
    score: Annotated[int, Field(ge=0, le=100)]
    reasons: list[str] = Field(default_factory=list)


class Failure(BaseModel):
    """Why a step did not succeed: a stable code, and when a retry can succeed (seconds)."""

    code: str
    retry_after: int | None = None
    message: str = ""


class Reconciliation(BaseModel):
    """What the reconciler has learnt about an unresolved payment or refund so far."""

    attempts: int = 0
    first_miss_at: str | None = None  # first lookup that found nothing at the provider
    next_at: str | None = None  # not looked at again before this time
    exhausted: bool = False  # retry budget spent: left for an operator, counted, alerted


class Payment(BaseModel):
    """A stored payment. `refundable_amount` is the authority for refunds."""

    payment_no: str
    merchant_id: str
    merchant_order_no: str
    order_no: str | None = None
    status: PaymentStatus
    amount: int
    currency: str
    channel: str
    payment_method: str = Field(repr=False)
    customer: Customer | None = None
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
    request_fingerprint: str | None = Field(default=None, repr=False)
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


class Order(BaseModel):
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


class Refund(BaseModel):
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


def invalid_request_from(errors: list[dict[str, Any]]) -> InvalidRequest:
    """Pydantic errors -> one invalid_request naming each field (never echoing values)."""
    details = [
        {
            "field": ".".join(str(part) for part in err.get("loc", ())) or "body",
            "issue": err.get("msg", "invalid"),
        }
        for err in errors
    ]
    return InvalidRequest("The request body is invalid.", details=details)
