"""Merchant request signing: HMAC-SHA256 over "{timestamp}.{METHOD}.{path}.{raw_body}"."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from payments.errors import Unauthorized


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    key_id: str


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    merchant_id: str
    secret: str
    active: bool = True


def sign(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}.{method.upper()}.{path}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    key_id: str, secret: str, method: str, path: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The authentication headers a merchant integration sends (clients, tests, benchmarks)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-API-Key": key_id,
        "X-Timestamp": ts,
        "X-Signature": sign(secret, ts, method, path, body),
    }


def authenticate(
    *,
    key_id: str | None,
    timestamp: str | None,
    signature: str | None,
    method: str,
    path: str,
    body: bytes,
    lookup: Callable[[str], ApiKey | None],
    tolerance_seconds: int,
    now: float | None = None,
) -> Merchant:
    """The merchant behind a signed request, or Unauthorized (one message for every cause)."""
    if not key_id or not timestamp or not signature:
        raise Unauthorized("Missing authentication headers.")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise Unauthorized() from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        raise Unauthorized("The request timestamp is outside the allowed window.")
    key = lookup(key_id)
    # Compute the expected signature even for unknown keys so timing does not reveal them.
    expected = sign(key.secret if key else "unknown-key", timestamp, method, path, body)
    if not hmac.compare_digest(expected, signature.lower()) or key is None or not key.active:
        raise Unauthorized()
    return Merchant(merchant_id=key.merchant_id, key_id=key.key_id)
