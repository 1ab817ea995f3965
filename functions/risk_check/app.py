"""Workflow task RiskCheck: score the payment (SPEC §3)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from payments.config import get_settings
from payments.logic.risk import assess
from payments.observability import instrument, tracing
from payments.records import dump, load
from payments.services import velocity_store
from payments.tasks import TaskInput


@instrument("risk-service")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    task = load(TaskInput, event)
    payment = task.payment
    settings = get_settings()
    # The payment's own creation time, not "now": a retried step counts it once.
    created_ms = int(datetime.fromisoformat(payment.created_at).timestamp() * 1000)

    def count_recent(customer_id: str) -> int:
        return velocity_store().record_and_count(
            customer_id,
            payment.payment_no,
            at_ms=created_ms,
            window_seconds=settings.risk_velocity_window_seconds,
        )

    result = assess(payment, settings, count_recent)
    tracing.annotate_step(**{"risk.decision": result.decision.value, "risk.score": result.score})
    return dump(result)
