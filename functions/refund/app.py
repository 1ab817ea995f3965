"""Refunds: POST /api/v1/payments/{payment_no}/refunds."""

from __future__ import annotations

from typing import Any

from payments.api.refunds import router
from payments.observability import instrument


@instrument("refund-service")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return router.resolve(event, context)
