"""Request and stored models (pydantic v2). Amounts are integer minor units.

Stored records (payments, refunds, orders, statuses, risk assessments) live in
`payments.records`, free of pydantic; they are re-exported here. pydantic validates what
comes from outside: request bodies and query strings."""

from __future__ import annotations

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
from payments.records import (
    REFUNDABLE_STATUSES,
    CustomerInfo,
    Failure,
    Order,
    OrderStatus,
    Payment,
    PaymentStatus,
    Reconciliation,
    Refund,
    RefundStatus,
    RiskAssessment,
    RiskDecision,
)

__all__ = [  # the records are re-exported: callers with pydantic loaded import them here
    "REFUNDABLE_STATUSES",
    "CreatePaymentRequest",
    "Customer",
    "CustomerInfo",
    "Failure",
    "ListPaymentsQuery",
    "Model",
    "Order",
    "OrderStatus",
    "Payment",
    "PaymentStatus",
    "Reconciliation",
    "Refund",
    "RefundRequest",
    "RefundStatus",
    "RiskAssessment",
    "RiskDecision",
    "invalid_request_from",
]

SUPPORTED_CHANNELS = frozenset({"stripe"})

MerchantOrderNo = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
]
ShortText = Annotated[str, StringConstraints(max_length=500)]


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
