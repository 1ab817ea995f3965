"""Merchant request signing: HMAC-SHA256 over "{timestamp}.{METHOD}.{path}.{raw_body}"."""

from __future__ import annotations

import hashlib
import hmac
import re
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


# What well-formed headers look like. Anything else is refused before it reaches the key
# store or `hmac.compare_digest` (which raises on non-ASCII text): any bytes give a 401.
_KEY_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, as key ids are issued
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


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
    """The merchant behind a signed request, or Unauthorized.

    Every cause (missing, malformed, stale, unknown key, wrong signature, inactive key) gets
    the same message, so a caller cannot tell which check failed (SPEC §2).
    """
    if not (
        key_id is not None
        and timestamp is not None
        and signature is not None
        and _KEY_ID.fullmatch(key_id)
        and _TIMESTAMP.fullmatch(timestamp)
        and _SIGNATURE.fullmatch(signature)
    ):
        raise Unauthorized()
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_seconds:
        raise Unauthorized()
    key = lookup(key_id)
    # Compute the expected signature even for unknown keys so timing does not reveal them.
    expected = sign(key.secret if key else "unknown-key", timestamp, method, path, body)
    if not hmac.compare_digest(expected, signature.lower()) or key is None or not key.active:
        raise Unauthorized()
    return Merchant(merchant_id=key.merchant_id, key_id=key.key_id)
