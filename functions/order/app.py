"""Workflow tasks CreateOrder, MarkOrderPaid and CancelOrder."""

from __future__ import annotations

from typing import Any

from payments.logic import orders
from payments.observability import instrument, tracing
from payments.records import dump, load
from payments.services import order_store
from payments.tasks import OrderTaskInput


@instrument("order-service")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    task = load(OrderTaskInput, event)
    order = orders.run(task, order_store())
    tracing.annotate_step(payment_no=task.payment.payment_no, order_no=order.order_no)
    return dump(order)
