"""Provider webhooks (SPEC §2 `POST /webhooks/stripe`): verified, deduplicated, and used
only as hints — the state is re-read from the provider before any transition.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from payments.errors import InvalidSignature, ServiceUnavailable
from payments.logic.reconcile import Outcome, Reconciler
from payments.observability import metrics
from payments.store.webhooks import WebhookEventStore

PAYMENT_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.processing",
    }
)
REFUND_EVENTS = frozenset({"charge.refunded", "refund.created", "refund.updated", "refund.failed"})
_MAX_HEADER = 4096


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    object: dict[str, Any]

    @property
    def metric_type(self) -> str:
        """Bounded label values: the handled types, everything else "other"."""
        return self.type if self.type in PAYMENT_EVENTS | REFUND_EVENTS else "other"


def verify(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    tolerance: int,
    now: float | None = None,
) -> Event:
    """Check `Stripe-Signature` (t=…,v1=…) against every secret (rotation), within the
    tolerance, then parse the event. Any failure is InvalidSignature (400), counted."""
    try:
        timestamp, signatures = _parse_header(header)
        if abs((now if now is not None else time.time()) - timestamp) > tolerance:
            raise ValueError("timestamp outside the tolerance")
        signed = f"{timestamp}.".encode() + body
        expected = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
        if not any(hmac.compare_digest(e, v) for e in expected for v in signatures):
            raise ValueError("no matching signature")
        event = _parse_event(body)
    except ValueError:
        metrics.WEBHOOK_EVENTS_TOTAL.inc(type="unknown", result="invalid_signature")
        raise InvalidSignature() from None
    return event


def _parse_header(header: str | None) -> tuple[int, list[str]]:
    if not header or len(header) > _MAX_HEADER or not header.isascii():
        raise ValueError("missing or malformed header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and len(value) == 64:
            signatures.append(value.lower())
    if timestamp is None or not signatures:
        raise ValueError("missing timestamp or v1 signature")
    return timestamp, signatures


def _parse_event(body: bytes) -> Event:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("body is not JSON") from None
    obj = (data.get("data") or {}).get("object") if isinstance(data, dict) else None
    if not (isinstance(data, dict) and isinstance(obj, dict)):
        raise ValueError("not an event")
    event_id, event_type = data.get("id"), data.get("type")
    if not (isinstance(event_id, str) and isinstance(event_type, str) and event_id):
        raise ValueError("event without id or type")
    return Event(event_id[:255], event_type[:255], obj)


# Reconciliation outcomes after which the provider should deliver the event again.
_RETRY = frozenset({Outcome.ERROR, Outcome.LOOKUP_FAILED})


def handle(event: Event, *, events: WebhookEventStore, reconciler: Reconciler) -> str:
    """Act on one verified event; returns the result (also the metric's `result` label).

    ServiceUnavailable when the hint could not be followed now (storage or the provider
    lookup failed): the event is not recorded, so Stripe's retry is handled afresh."""
    try:
        if events.seen(event.id):
            result = "duplicate"
        else:
            result = _dispatch(event, reconciler)
            if result == "retry":
                raise ServiceUnavailable(headers={"Retry-After": "30"})
            if not events.remember(event.id, event.type):
                result = "duplicate"  # a concurrent delivery handled it too; both harmless
    except ServiceUnavailable:
        metrics.WEBHOOK_EVENTS_TOTAL.inc(type=event.metric_type, result="retry")
        raise
    except Exception:
        metrics.WEBHOOK_EVENTS_TOTAL.inc(type=event.metric_type, result="retry")
        raise ServiceUnavailable(headers={"Retry-After": "30"}) from None
    metrics.WEBHOOK_EVENTS_TOTAL.inc(type=event.metric_type, result=result)
    return result


def _dispatch(event: Event, reconciler: Reconciler) -> str:
    metadata = event.object.get("metadata") or {}
    payment_no = metadata.get("payment_no") if isinstance(metadata, dict) else None
    if not isinstance(payment_no, str) or not payment_no:
        return "ignored"  # not one of ours (or no hint to follow)
    if event.type in PAYMENT_EVENTS:
        reference = event.object.get("id")
        outcomes = [
            reconciler.reconcile_payment(
                payment_no, reference=reference if isinstance(reference, str) else None
            )
        ]
    elif event.type in REFUND_EVENTS:
        refund_no = metadata.get("refund_no")
        if isinstance(refund_no, str) and refund_no:
            outcomes = [reconciler.reconcile_refund(payment_no, refund_no)]
        else:
            outcomes = [
                reconciler.reconcile_refund(payment_no, refund.refund_no)
                for refund in reconciler.payments.refunds(payment_no)
            ]
    else:
        return "ignored"
    if any(o in _RETRY for o in outcomes):
        return "retry"
    if outcomes and all(o is Outcome.NOT_FOUND for o in outcomes):
        return "ignored"
    return "processed"
