"""Business metrics with the defer pattern: every exit path records exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from payments import money
from payments.errors import AmountExceeded, DuplicateOrder, InvalidStatus, PaymentError
from payments.observability import metrics

UNKNOWN = "unknown"

_PAYMENT_ERROR_STATUS = {
    "duplicate_order": "duplicate",
    "risk_rejected": "risk_rejected",
}
_REFUND_ERROR_STATUS = {
    InvalidStatus.code: "invalid_status",
    AmountExceeded.code: "amount_exceeded",
}


@dataclass
class Attempt:
    status: str | None = None
    currency: str = UNKNOWN
    channel: str = UNKNOWN
    amount_minor: int | None = None


def _label(value: str, allowed: object) -> str:
    """Only known values become labels: bad input must not create series."""
    return value if isinstance(allowed, dict | frozenset | set) and value in allowed else UNKNOWN


def _status_for_payment_error(err: Exception) -> str:
    if isinstance(err, PaymentError):
        if isinstance(err, DuplicateOrder):
            return "duplicate"
        if err.status in (400, 401, 404, 405, 413, 422):
            return "invalid"
        return _PAYMENT_ERROR_STATUS.get(err.code, "failed")
    return "failed"


@contextmanager
def payment_attempt() -> Iterator[Attempt]:
    attempt = Attempt()
    started = time.perf_counter()
    try:
        yield attempt
    except Exception as err:
        attempt.status = _status_for_payment_error(err)
        raise
    finally:
        status = attempt.status or "failed"
        currency = _label(attempt.currency, money.CURRENCY_EXPONENTS)
        channel = attempt.channel if currency != UNKNOWN else UNKNOWN
        metrics.PAYMENT_TOTAL.inc(status=status, channel=channel, currency=currency)
        metrics.PAYMENT_DURATION.observe(
            time.perf_counter() - started, operation="create", status=status
        )
        if status == "success" and attempt.amount_minor is not None:
            metrics.PAYMENT_AMOUNT.observe(
                float(money.to_major(attempt.amount_minor, attempt.currency)),
                currency=currency,
                channel=channel,
            )


def _status_for_refund_error(err: Exception) -> str:
    if isinstance(err, PaymentError):
        if err.code in _REFUND_ERROR_STATUS:
            return _REFUND_ERROR_STATUS[err.code]
        if err.status in (400, 413):
            return "invalid_amount"
    return "failed"


@contextmanager
def refund_attempt() -> Iterator[Attempt]:
    attempt = Attempt()
    started = time.perf_counter()
    try:
        yield attempt
    except Exception as err:
        attempt.status = _status_for_refund_error(err)
        raise
    finally:
        status = attempt.status or "failed"
        currency = _label(attempt.currency, money.CURRENCY_EXPONENTS)
        metrics.REFUND_TOTAL.inc(status=status, currency=currency)
        metrics.PAYMENT_DURATION.observe(
            time.perf_counter() - started, operation="refund", status=status
        )
        if status in ("success", "partial_success") and attempt.amount_minor is not None:
            metrics.REFUND_AMOUNT.observe(
                float(money.to_major(attempt.amount_minor, attempt.currency)), currency=currency
            )
