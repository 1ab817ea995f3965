"""Order lifecycle steps of the workflow. The order number derives from the payment number,
so a retried CreateOrder finds its own order instead of making a second one."""

from __future__ import annotations

from typing import Any

from payments.logic import utc_now
from payments.models import Order, OrderStatus
from payments.store.orders import OrderStore


def order_no_for(payment_no: str) -> str:
    return "ord_" + payment_no.removeprefix("pay_")


def create(payment: dict[str, Any], store: OrderStore) -> Order:
    now = utc_now()
    order = Order(
        order_no=order_no_for(payment["payment_no"]),
        payment_no=payment["payment_no"],
        merchant_id=payment["merchant_id"],
        merchant_order_no=payment["merchant_order_no"],
        amount=payment["amount"],
        currency=payment["currency"],
        status=OrderStatus.CREATED,
        created_at=now,
        updated_at=now,
    )
    return store.create(order)


def mark_paid(order_no: str, store: OrderStore) -> Order:
    return store.transition(
        order_no, source=OrderStatus.CREATED, target=OrderStatus.PAID, now=utc_now()
    )


def cancel(order_no: str, store: OrderStore) -> Order:
    return store.transition(
        order_no, source=OrderStatus.CREATED, target=OrderStatus.CANCELLED, now=utc_now()
    )


def mark_refunded(order_no: str, store: OrderStore) -> Order:
    return store.transition(
        order_no, source=OrderStatus.PAID, target=OrderStatus.REFUNDED, now=utc_now()
    )
