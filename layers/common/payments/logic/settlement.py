"""The final transitions of a payment, shared by the gateway, the reconciler and webhooks.

Each moves payment, order and merchant_order_no guard in one transaction, conditioned on
the payment still being `processing`, so whoever settles first wins and the others see
the same result (or `AlreadySettled` when the ledger already says something else).
"""

from __future__ import annotations

from typing import Any

from payments.logic import utc_now
from payments.logic.orders import order_no_for
from payments.observability.logging import logger
from payments.records import OrderStatus, Payment, PaymentStatus
from payments.store.orders import OrderStore
from payments.store.payments import OrderMove, PaymentStore, Settlement

__all__ = ["settle_charged", "settle_not_charged", "settle_without_order"]


def settle_charged(
    payment: Payment,
    *,
    payments: PaymentStore,
    orders: OrderStore,
    channel_reference: str,
    fields: dict[str, Any] | None = None,
) -> Payment:
    """The provider charged: payment succeeded and its order paid."""
    order = orders.find(order_no_for(payment.payment_no))
    move = None
    if order is None:
        # Charges only follow CreateOrder; a missing order is a bug worth an operator's eye.
        logger.error("charged payment has no order", extra={"payment_no": payment.payment_no})
    else:
        move = OrderMove(order.order_no, OrderStatus.PAID, (OrderStatus.CREATED, OrderStatus.PAID))
    values = {**(fields or {}), "channel_reference": channel_reference}
    if order is not None:
        values["order_no"] = order.order_no
    return payments.settle(
        payment, Settlement(PaymentStatus.SUCCEEDED, values, order=move), now=utc_now()
    )


def settle_not_charged(
    payment: Payment,
    *,
    payments: PaymentStore,
    orders: OrderStore,
    failure_code: str,
    fields: dict[str, Any] | None = None,
) -> Payment:
    """No money moved: payment failed, its order (if one was created) cancelled, and the
    merchant_order_no free to be paid again."""
    order = orders.find(order_no_for(payment.payment_no))
    move = None
    values = {**(fields or {}), "failure_code": failure_code}
    if order is not None:
        move = OrderMove(
            order.order_no,
            OrderStatus.CANCELLED,
            (OrderStatus.CREATED, OrderStatus.CANCELLED),
        )
        values["order_no"] = order.order_no
    return payments.settle(
        payment,
        Settlement(PaymentStatus.FAILED, values, order=move, release_guard=True),
        now=utc_now(),
    )


def settle_without_order(
    payment: Payment, status: PaymentStatus, *, payments: PaymentStore, fields: dict[str, Any]
) -> Payment:
    """Risk said reject or review: no order, no charge; the merchant_order_no stays taken."""
    return payments.settle(payment, Settlement(status, fields), now=utc_now())
