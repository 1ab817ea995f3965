"""Provider webhooks: POST /webhooks/stripe."""

from __future__ import annotations

from typing import Any

from payments.api.webhooks import router
from payments.observability import instrument


@instrument("webhook-service")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return router.resolve(event, context)
