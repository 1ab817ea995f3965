"""Order lifecycle steps of the workflow. The order number derives from the payment number,
so a retried CreateOrder finds its own order instead of making a second one."""

from __future__ import annotations

from payments.logic import utc_now
from payments.records import Order, OrderStatus
from payments.store.orders import OrderStore
from payments.tasks import OrderAction, OrderRef, OrderTaskInput, TaskPayment


def order_no_for(payment_no: str) -> str:
    return "ord_" + payment_no.removeprefix("pay_")


def run(task: OrderTaskInput, store: OrderStore) -> OrderRef:
    """One order step of the workflow; each is idempotent, so a retried task is harmless."""
    if task.action is OrderAction.CREATE:
        order = create(task.payment, store)
    else:
        order_no = task.order.order_no if task.order else order_no_for(task.payment.payment_no)
        move = mark_paid if task.action is OrderAction.MARK_PAID else cancel
        order = move(order_no, store)
    return OrderRef(order_no=order.order_no, status=order.status)


def create(payment: TaskPayment, store: OrderStore) -> Order:
    now = utc_now()
    order = Order(
        order_no=order_no_for(payment.payment_no),
        payment_no=payment.payment_no,
        merchant_id=payment.merchant_id,
        merchant_order_no=payment.merchant_order_no,
        amount=payment.amount,
        currency=payment.currency,
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


def cancel_if_open(order_no: str, store: OrderStore) -> None:
    """Compensation outside the workflow: cancel a created order (a no-op otherwise)."""
    order = store.find(order_no)
    if order is not None and order.status is OrderStatus.CREATED:
        cancel(order_no, store)


def mark_refunded(order_no: str, store: OrderStore) -> Order:
    return store.transition(
        order_no, source=OrderStatus.PAID, target=OrderStatus.REFUNDED, now=utc_now()
    )
