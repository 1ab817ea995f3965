"""Helpers for building signed API Gateway HTTP API v2 events in tests."""

from __future__ import annotations

import uuid
from typing import Any

from local.events import DEMO_KEY, DEMO_SECRET, api_event

__all__ = ["DEMO_KEY", "DEMO_SECRET", "api_event", "payment_body"]


def payment_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "merchant_order_no": f"order-{uuid.uuid4().hex[:12]}",
        "amount": 1999,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "customer": {
            "id": f"cus_{uuid.uuid4().hex[:8]}",
            "email": "jane@example.com",
            "country": "US",
        },
    }
    body.update(overrides)
    return body
