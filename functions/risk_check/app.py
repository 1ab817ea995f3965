"""Workflow task RiskCheck: score the payment (SPEC §3)."""

from __future__ import annotations

import time
from typing import Any

from payments.config import get_settings
from payments.logic.risk import assess
from payments.observability import instrument, tracing
from payments.services import velocity_store


@instrument("risk-service")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    payment = event["payment"]
    settings = get_settings()

    def count_recent(customer_id: str) -> int:
        return velocity_store().record_and_count(
            customer_id,
            payment["payment_no"],
            now_ms=int(time.time() * 1000),
            window_seconds=settings.risk_velocity_window_seconds,
        )

    result = assess(payment, settings, count_recent)
    tracing.annotate_step(**{"risk.decision": result.decision.value, "risk.score": result.score})
    return result.model_dump(mode="json")
