"""Business metrics with the defer pattern: every exit path records exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from payments import money
from payments.errors import AmountExceeded, DuplicateOrder, InvalidStatus, PaymentError
from payments.observability import metrics

UNKNOWN = "unknown"


@dataclass
class Attempt:
    status: str | None = None
    currency: str = UNKNOWN
    channel: str = UNKNOWN
    amount_minor: int | None = None

    @property
    def currency_label(self) -> str:
        """Only supported currencies become labels: bad input must not create series."""
        return self.currency if self.currency in money.CURRENCY_EXPONENTS else UNKNOWN

    def major_amount(self) -> float | None:
        if self.amount_minor is None or self.currency_label == UNKNOWN:
            return None
        return float(money.to_major(self.amount_minor, self.currency))


def _payment_status(err: Exception) -> str:
    if isinstance(err, DuplicateOrder):
        return "duplicate"
    if isinstance(err, PaymentError) and err.status in (400, 401, 404, 405, 413, 422):
        return "invalid"
    return "failed"


def _refund_status(err: Exception) -> str:
    if isinstance(err, InvalidStatus):
        return "invalid_status"
    if isinstance(err, AmountExceeded):
        return "amount_exceeded"
    if isinstance(err, PaymentError) and err.status in (400, 413):
        return "invalid_amount"
    return "failed"


@contextmanager
def _attempt(
    classify: Callable[[Exception], str], record: Callable[[Attempt, str, float], None]
) -> Iterator[Attempt]:
    attempt = Attempt()
    started = time.perf_counter()
    try:
        yield attempt
    except Exception as err:
        attempt.status = classify(err)
        raise
    finally:
        record(attempt, attempt.status or "failed", time.perf_counter() - started)


def _record_payment(attempt: Attempt, status: str, seconds: float) -> None:
    currency = attempt.currency_label
    channel = attempt.channel if currency != UNKNOWN else UNKNOWN
    metrics.PAYMENT_TOTAL.inc(status=status, channel=channel, currency=currency)
    metrics.PAYMENT_DURATION.observe(seconds, operation="create", status=status)
    amount = attempt.major_amount()
    if status == "success" and amount is not None:
        metrics.PAYMENT_AMOUNT.observe(amount, currency=currency, channel=channel)


def _record_refund(attempt: Attempt, status: str, seconds: float) -> None:
    currency = attempt.currency_label
    metrics.REFUND_TOTAL.inc(status=status, currency=currency)
    metrics.PAYMENT_DURATION.observe(seconds, operation="refund", status=status)
    amount = attempt.major_amount()
    if status in ("success", "partial_success") and amount is not None:
        metrics.REFUND_AMOUNT.observe(amount, currency=currency)


def payment_attempt() -> AbstractContextManager[Attempt]:
    return _attempt(_payment_status, _record_payment)


def refund_attempt() -> AbstractContextManager[Attempt]:
    return _attempt(_refund_status, _record_refund)
