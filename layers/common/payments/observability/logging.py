"""Structured JSON logging: Powertools `Logger`, trace correlation and redaction.

    from payments.observability.logging import logger

    logger.append_keys(payment_no=payment_no, merchant_id=merchant_id)
    logger.info("payment created", extra={"channel": "stripe"})

Every line is one JSON object carrying `trace_id` and `span_id` of the current OpenTelemetry
span (when there is one), the keys appended by business code (`payment_no`, `merchant_id`),
and is passed through `redaction.redact` (message, extra keys, exception text) before it is
written. `instrument` sets the service name once and clears per-invocation keys after each
invocation (`clear_invocation_keys`).
"""

from __future__ import annotations

import sys
from typing import IO, Any, cast

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from opentelemetry import trace

from payments.observability.redaction import redact

# Keys business code appends per invocation; always removed after an invocation.
INVOCATION_KEYS = ("payment_no", "merchant_id", "function_request_id", "cold_start")


class _StdoutProxy:
    """Writes to whatever `sys.stdout` is now (Lambda's stdout, or a test's capture)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools JSON formatter adding trace correlation and redacting every record."""

    def serialize(self, log: Any) -> str:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            log.setdefault("trace_id", format(span_context.trace_id, "032x"))
            log.setdefault("span_id", format(span_context.span_id, "016x"))
        return super().serialize(redact(log))


logger = Logger(
    service="payments",
    logger_formatter=RedactingFormatter(),
    stream=cast("IO[str]", _StdoutProxy()),
)

_baseline_keys: frozenset[str] = frozenset(logger.get_current_keys())


def configure(service: str) -> None:
    """Name the service on every log line (once per execution environment)."""
    global _baseline_keys  # noqa: PLW0603 - one logger per execution environment
    logger.service = service
    formatter = logger.registered_formatter
    if isinstance(formatter, LambdaPowertoolsFormatter):
        formatter.keys_combined["service"] = service
    logger.append_keys(service=service)
    _baseline_keys = frozenset(logger.get_current_keys())


def clear_invocation_keys() -> None:
    """Remove the keys appended during an invocation (payment_no, merchant_id, ...)."""
    current = logger.get_current_keys()
    stale = [key for key in current if key not in _baseline_keys or key in INVOCATION_KEYS]
    logger.remove_keys(stale)
    logger.thread_safe_clear_keys()
