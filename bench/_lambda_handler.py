"""A no-op handler for the OpenTelemetry Lambda instrumentor to wrap (cold-start variant)."""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any) -> Any:
    return event
