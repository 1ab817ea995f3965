"""Refunds: reserve the amount atomically, ask the provider, then record or release."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from payments.channel import ChannelClient
from payments.errors import InvalidStatus, RefundFailed
from payments.logic import new_id, utc_now
from payments.logic.orders import mark_refunded
from payments.models import REFUNDABLE_STATUSES, Payment, PaymentStatus, Refund, RefundRequest
from payments.observability.logging import logger
from payments.store.orders import OrderStore
from payments.store.payments import PaymentStore


class RefundOutcome(BaseModel):
    refund: Refund
    payment: Payment


def refund(
    merchant_id: str,
    payment_no: str,
    request: RefundRequest,
    *,
    payments: PaymentStore,
    orders: OrderStore,
    channel_for: Callable[[str], ChannelClient],
    refund_no: str | None = None,
    on_payment: Callable[[Payment], None] | None = None,
) -> RefundOutcome:
    payment = payments.get(payment_no, merchant_id)
    if on_payment is not None:
        on_payment(payment)  # lets the caller label its metrics even when the refund fails
    if payment.status not in REFUNDABLE_STATUSES or not payment.channel_reference:
        raise InvalidStatus(f"Payment is {payment.status.value}; it cannot be refunded.")
    refund_no = refund_no or new_id("re")
    logger.append_keys(payment_no=payment_no, refund_no=refund_no)
    payments.reserve_refund(payment_no, request.amount, now=utc_now())
    channel = channel_for(payment.channel)
    try:
        result = channel.refund(
            charge_reference=payment.channel_reference,
            amount=request.amount,
            idempotency_key=f"refund-{refund_no}",
            reason=request.reason,
        )
    except Exception:
        # Unavailable or unknown: the provider made no refund we know of; give it back.
        payments.release_refund(payment_no, request.amount, now=utc_now())
        raise
    if result.outcome != "succeeded":
        payments.release_refund(payment_no, request.amount, now=utc_now())
        raise RefundFailed(f"The provider declined the refund ({result.decline_code}).")
    made = Refund(
        refund_no=refund_no,
        payment_no=payment_no,
        amount=request.amount,
        currency=payment.currency,
        status="succeeded",
        reason=request.reason,
        channel_reference=result.channel_reference,
        created_at=utc_now(),
    )
    updated = payments.complete_refund(made, now=utc_now())
    if updated.status is PaymentStatus.REFUNDED and updated.order_no:
        try:
            mark_refunded(updated.order_no, orders)
        except InvalidStatus:
            logger.warning("order not in paid status when fully refunded")
    return RefundOutcome(refund=made, payment=updated)
