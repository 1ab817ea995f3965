"""GET /health: storage reachable and circuit-breaker states."""

from __future__ import annotations

from typing import Any


def check() -> tuple[bool, dict[str, Any]]:
    from payments.channel import breaker_states
    from payments.config import get_settings
    from payments.store.clients import dynamodb

    checks: dict[str, Any] = {}
    healthy = True
    try:
        dynamodb().describe_table(TableName=get_settings().payments_table)
        checks["storage"] = "ok"
    except Exception:
        checks["storage"] = "unreachable"
        healthy = False
    breakers = breaker_states()
    checks["circuit_breakers"] = breakers
    if any(state == "open" for state in breakers.values()):
        healthy = False
    return healthy, checks
