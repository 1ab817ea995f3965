"""Refunds: reserve the amount and store the refund `pending` atomically, ask the provider,
then record or release what the provider's answer proves.

An unknown answer (timeout, 5xx, connection lost) keeps the refund `pending` with its amount
reserved, answered 202; the reconciler settles it. A retried request (same key, so the same
refund number) finds its refund and, while it is pending, asks the provider again with the
same idempotency key, which can never refund twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from payments.channel import CallOutcome, ChannelClient, ChannelError, RefundResult
from payments.errors import ChannelUnavailable, InvalidStatus, PaymentError, RefundFailed
from payments.logic import utc_now
from payments.logic.orders import mark_refunded
from payments.observability.logging import logger
from payments.records import (
    REFUNDABLE_STATUSES,
    Payment,
    PaymentStatus,
    Record,
    Refund,
    RefundStatus,
    replace,
)
from payments.store.orders import OrderStore
from payments.store.payments import AlreadyFinal, PaymentStore, RefundExists

if TYPE_CHECKING:  # the reconciler settles refunds without loading the request models
    from payments.models import RefundRequest


class RefundOutcome(Record, frozen=True, kw_only=True):
    refund: Refund
    payment: Payment

    def http_status(self) -> int:
        return 201 if self.refund.status is RefundStatus.SUCCEEDED else 202


def refund(
    merchant_id: str,
    payment_no: str,
    request: RefundRequest,
    *,
    payments: PaymentStore,
    orders: OrderStore,
    channel_for: Callable[[str], ChannelClient],
    refund_no: str,
    trace_parent: str | None = None,
    on_payment: Callable[[Payment], None] | None = None,
) -> RefundOutcome:
    payment = payments.get(payment_no, merchant_id)
    if on_payment is not None:
        on_payment(payment)  # lets the caller label its metrics even when the refund fails
    logger.append_keys(payment_no=payment_no, refund_no=refund_no)
    now = utc_now()
    pending = Refund(
        refund_no=refund_no,
        payment_no=payment_no,
        amount=request.amount,
        currency=payment.currency,
        status=RefundStatus.PENDING,
        reason=request.reason,
        created_at=now,
        updated_at=now,
        trace_parent=trace_parent,
    )
    # A retried request (same key, same refund number) finds the refund it stored before.
    existing = payments.get_refund(payment_no, refund_no)
    if existing is None:
        if payment.status not in REFUNDABLE_STATUSES or not payment.channel_reference:
            raise InvalidStatus(f"Payment is {payment.status.value}; it cannot be refunded.")
        try:
            payments.begin_refund(pending)
        except RefundExists as raced:
            existing = raced.refund
    if existing is not None:
        if existing.status is not RefundStatus.PENDING:
            return _answer(existing, payments.get(payment_no))
        pending = existing
    reference = payment.channel_reference
    assert reference is not None  # checked above, or by the request that stored the refund
    result = channel_for(payment.channel).refund(
        refund_no=refund_no,
        payment_no=payment_no,
        charge_reference=reference,
        amount=pending.amount,
        idempotency_key=f"refund-{refund_no}",
        reason=pending.reason,
    )
    return apply_result(pending, result, payments=payments, orders=orders)


def apply_result(
    refund: Refund, result: RefundResult, *, payments: PaymentStore, orders: OrderStore
) -> RefundOutcome:
    """Record or release a pending refund according to what the provider said."""
    now = utc_now()
    try:
        if result.outcome is CallOutcome.SUCCEEDED:
            return complete(refund, result.channel_reference, payments=payments, orders=orders)
        if result.outcome is CallOutcome.UNKNOWN:
            logger.warning("refund outcome unknown; left pending for reconciliation")
            return RefundOutcome(refund=refund, payment=payments.get(refund.payment_no))
        # Declined: recorded as failed. Never reached the provider / refused as malformed:
        # forgotten, so the same request can run again afresh.
        forget = result.outcome is not CallOutcome.DECLINED
        code = result.decline_code or (result.failure.code if result.failure else "refund_failed")
        failed = payments.fail_refund(refund, failure_code=code, now=now, forget=forget)
    except AlreadyFinal as final:  # the reconciler or a webhook settled it first
        assert final.refund is not None
        return _answer(final.refund, payments.get(refund.payment_no))
    if result.outcome is CallOutcome.UNAVAILABLE:
        retry_after = (result.failure.retry_after if result.failure else None) or 1
        raise ChannelUnavailable(retry_after=retry_after)
    if result.outcome is CallOutcome.REJECTED:
        raise ChannelError()
    return _answer(failed or replace(refund, status=RefundStatus.FAILED), None)


def complete(
    refund: Refund,
    channel_reference: str | None,
    *,
    payments: PaymentStore,
    orders: OrderStore,
) -> RefundOutcome:
    made, payment = payments.complete_refund(
        refund, channel_reference=channel_reference, now=utc_now()
    )
    if payment.status is PaymentStatus.REFUNDED and payment.order_no:
        try:
            mark_refunded(payment.order_no, orders)
        except InvalidStatus:
            logger.warning("order not in paid status when fully refunded")
    return RefundOutcome(refund=made, payment=payment)


def _answer(refund: Refund, payment: Payment | None) -> RefundOutcome:
    """The response for a refund in its final or pending state."""
    if refund.status is RefundStatus.FAILED:
        error: PaymentError = RefundFailed(
            f"The provider declined the refund ({refund.failure_code or 'refund_failed'})."
        )
        raise error
    assert payment is not None
    return RefundOutcome(refund=refund, payment=payment)
