"""Workflow tasks CreateOrder, MarkOrderPaid and CancelOrder."""

from __future__ import annotations

from typing import Any

from payments.logic import orders
from payments.observability import instrument, tracing
from payments.services import order_store


@instrument("order-service")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = event["action"]
    store = order_store()
    if action == "create":
        order = orders.create(event["payment"], store)
    elif action == "mark_paid":
        order = orders.mark_paid(event["order"]["order_no"], store)
    elif action == "cancel":
        order = orders.cancel(event["order"]["order_no"], store)
    else:
        raise ValueError(f"unknown order action {action!r}")
    tracing.annotate_step(payment_no=order.payment_no, order_no=order.order_no)
    return {"order_no": order.order_no, "status": order.status.value}
