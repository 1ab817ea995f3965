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
    status: str
    reason: str | None = None
    channel_reference: str | None = None
    created_at: str

    def public(self) -> dict[str, Any]:
        return {
            "refund_no": self.refund_no,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
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
