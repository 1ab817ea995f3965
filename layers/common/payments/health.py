"""GET /health: storage reachable, the provider circuit breakers as every execution
environment sees them (the shared state, not this function's own breaker, which never
calls the provider), and the reconciliation backlog."""

from __future__ import annotations

import time
from typing import Any


def check() -> tuple[bool, dict[str, Any]]:
    from payments import services
    from payments.channel import SUPPORTED
    from payments.channel.breaker import describe
    from payments.config import get_settings
    from payments.logic.reconcile import backlog

    checks: dict[str, Any] = {}
    healthy = True
    try:
        store = services.breaker_store()
        now = time.time()
        breakers = {name: describe(store.opened_until(name), now) for name in SUPPORTED}
        checks["storage"] = "ok"
    except Exception:
        checks["storage"] = "unreachable"
        return False, checks
    checks["circuit_breakers"] = breakers
    if any(b["state"] == "open" for b in breakers.values()):
        healthy = False
    try:
        checks["reconciliation"] = backlog(services.payment_store(), get_settings())
    except Exception:
        checks["reconciliation"] = "unavailable"
    return healthy, checks
