"""Payment gateway: POST/GET payments, GET orders, GET /health."""

from __future__ import annotations

from typing import Any

from payments.api.gateway import router
from payments.observability import instrument


@instrument("payment-gateway")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return router.resolve(event, context)
