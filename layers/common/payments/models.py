"""Domain and request models (pydantic v2). Amounts are integer minor units."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from payments import money
from payments.errors import (
    InvalidAmount,
    InvalidRequest,
    PaymentError,
    UnsupportedChannel,
    UnsupportedCurrency,
)

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


class Model(BaseModel):
    """Base of the layer's models. Validators are built on a model's first use, not at import:
    each function's cold start uses a few of the models, and building the others' validators
    would cost it as much as importing boto3 again."""

    model_config = ConfigDict(defer_build=True)


class _Strict(Model):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


_EMAIL = r"^[^@\x00-\x20\x7f]+@[^@\x00-\x20\x7f]+$"


class Customer(_Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    # No controls or spaces around one "@". Spelled out rather than `\s`, whose meaning
    # differs between regex engines (this one, openapi.yaml's ECMA-262, the fuzzer's `re`).
    email: Annotated[str, StringConstraints(max_length=254, pattern=_EMAIL)] | None = None
    ip: Annotated[str, StringConstraints(max_length=45)] | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None


# Stripe's metadata limits (SPEC §2): an empty key was once stored and then broke every read.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]

# Error types the request models raise for the SPEC's own codes. They are collected by
# pydantic with every other field error (a domain exception raised inside a validator
# would stop validation and hide the rest); `invalid_request_from` picks the code.
AMOUNT_ERROR = "invalid_amount"
CURRENCY_ERROR = "unsupported_currency"
CHANNEL_ERROR = "unsupported_channel"


def _integer_amount(value: object) -> int:
    """A JSON integer (not bool, float or string) of at least MIN_AMOUNT minor units."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError(AMOUNT_ERROR, "amount must be an integer number of minor units")
    if value < money.MIN_AMOUNT:
        raise PydanticCustomError(AMOUNT_ERROR, "amount must be a positive integer")
    return value


class CreatePaymentRequest(_Strict):
    merchant_order_no: MerchantOrderNo
    amount: int
    currency: str
    channel: str = "stripe"
    payment_method: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    customer: Customer | None = None
    description: ShortText | None = None
    metadata: dict[MetadataKey, ShortText] | None = Field(default=None, max_length=20)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: object) -> int:
        amount = _integer_amount(value)
        if amount > money.MAX_AMOUNT:
            raise PydanticCustomError(
                AMOUNT_ERROR, f"amount must be at most {money.MAX_AMOUNT} minor units"
            )
        return amount

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if value not in money.CURRENCY_EXPONENTS:  # never echoed: it may be any 32 KiB
            raise PydanticCustomError(CURRENCY_ERROR, "currency is not a supported ISO 4217 code")
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if value not in SUPPORTED_CHANNELS:
            raise PydanticCustomError(CHANNEL_ERROR, "channel is not supported")
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
        """Any positive integer; above what can be refundable it is 422, not 400 (SPEC §2).

        An amount beyond MAX_AMOUNT exceeds every payment's refundable amount. It is kept
        as MAX_AMOUNT + 1 so the refund runs its usual checks in their usual order (404,
        409, then 422 amount_exceeded from the store's conditional reservation) without
        sending DynamoDB a number it cannot hold (more than 38 digits).
        """
        return min(_integer_amount(value), money.MAX_AMOUNT + 1)


class RiskAssessment(Model):
    decision: RiskDecision
    score: Annotated[int, Field(ge=0, le=100)]
    reasons: list[str] = Field(default_factory=list)


class Failure(Model):
    """Why a step did not succeed: a stable code, and when a retry can succeed (seconds)."""

    code: str
    retry_after: int | None = None
    message: str = ""


class Reconciliation(Model):
    """What the reconciler has learnt about an unresolved payment or refund so far."""

    attempts: int = 0
    first_miss_at: str | None = None  # first lookup that found nothing at the provider
    next_at: str | None = None  # not looked at again before this time
    exhausted: bool = False  # retry budget spent: left for an operator, counted, alerted


class Payment(Model):
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


class Order(Model):
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


class Refund(Model):
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


# When several fields are wrong, the code is the first of these found among the errors
# (the SPEC's table order), else invalid_request; `details` always lists every error.
_CODE_PRECEDENCE = (AMOUNT_ERROR, CURRENCY_ERROR, CHANNEL_ERROR)
_ERROR_CLASSES: dict[str, type[PaymentError]] = {
    AMOUNT_ERROR: InvalidAmount,
    CURRENCY_ERROR: UnsupportedCurrency,
    CHANNEL_ERROR: UnsupportedChannel,
}
MAX_DETAILS = 50  # a 32 KiB body can hold thousands of errors; the first 50 say enough


def invalid_request_from(errors: list[dict[str, Any]]) -> PaymentError:
    """Pydantic errors -> one 400 naming every invalid field (never echoing values)."""
    all_details = [_detail(err) for err in errors]
    details = all_details[:MAX_DETAILS]
    codes = {d["code"] for d in all_details}
    code = next((c for c in _CODE_PRECEDENCE if c in codes), None)
    if code is None:
        return InvalidRequest("The request body is invalid.", details=details)
    return _ERROR_CLASSES[code](details=details)


# Pydantic messages that name our classes ("... instance of Customer"): internal names
# never reach a response.
_MESSAGES = {
    "model_type": "Input should be an object",
    "model_attributes_type": "Input should be an object",
}


def _detail(err: dict[str, Any]) -> dict[str, Any]:
    loc = tuple(err.get("loc", ()))
    kind = str(err.get("type", ""))
    issue = _MESSAGES.get(kind, str(err.get("msg", "invalid")))
    if loc[-1:] == ("[key]",):  # a dict key itself is invalid (metadata keys)
        loc, issue = loc[:-1], f"key: {issue}"
    if loc[:1] == ("amount",):  # missing, wrong type or out of range: all invalid_amount
        kind = AMOUNT_ERROR
    code = kind if kind in _ERROR_CLASSES else "invalid_request"
    field = ".".join(_part(p) for p in loc) or "body"
    return {"field": field, "issue": issue, "code": code}


def _part(part: object) -> str:
    """A location part; client-chosen keys (metadata, unknown fields) are kept short."""
    text = str(part)
    if not text:
        return '""'
    return text if len(text) <= 64 else text[:61] + "..."
