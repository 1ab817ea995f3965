"""Scheduled reconciliation of unresolved payments and refunds (SPEC §4)."""

from __future__ import annotations

from typing import Any

from payments import services
from payments.observability import instrument
from payments.observability.logging import logger


@instrument("reconciler")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    counts = services.reconciler().run()
    logger.info("reconciliation run", extra={"outcomes": counts})
    return {"outcomes": counts}
