#!/usr/bin/env python3
"""Sign sample API Gateway (HTTP API, payload 2.0) events with the merchant HMAC scheme.

The signature is lowercase hex ``HMAC-SHA256(secret, "{timestamp}.{METHOD}.{path}.{raw_body}")``
(SPEC §2), where ``path`` is the request path without query string and ``raw_body`` the exact
bytes sent (empty for GET). This file implements the formula independently of the platform's
own ``payments.auth`` so that each checks the other.

Sample events go stale after 300 s; refresh them in place before ``sam local invoke``::

    python events/sign.py events/create_payment_success.json events/refund_partial.json
    python events/sign.py --stdout events/get_payment.json | sam local invoke ... -e -
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEMO_SECRET = "sk_demo_secret"  # noqa: S105 - the documented local demo merchant (SPEC §2)
TIMESTAMP_HEADER = "x-timestamp"
SIGNATURE_HEADER = "x-signature"
API_KEY_HEADER = "x-api-key"


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def sign(secret: str, timestamp: int | str, method: str, path: str, body: str | bytes) -> str:
    """Return the lowercase hex HMAC-SHA256 signature of one request."""
    message = f"{timestamp}.{method.upper()}.{path}.".encode() + _as_bytes(body)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def raw_body(event: dict[str, Any]) -> bytes:
    """The exact body bytes of an HTTP API event (base64-decoded when flagged)."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return _as_bytes(body)


def event_method(event: dict[str, Any]) -> str:
    return str(event["requestContext"]["http"]["method"]).upper()


def event_path(event: dict[str, Any]) -> str:
    """The request path without query string, as the signature covers it."""
    path = event.get("rawPath") or event["requestContext"]["http"]["path"]
    return str(path).split("?", 1)[0]


def resign_event(
    event: dict[str, Any], secret: str = DEMO_SECRET, now: int | None = None
) -> dict[str, Any]:
    """Return a copy of ``event`` with a fresh ``x-timestamp`` and matching ``x-signature``.

    Events without an ``x-api-key`` header (e.g. ``GET /health``) are unauthenticated and
    come back unchanged (as a copy).
    """
    fresh = copy.deepcopy(event)
    headers: dict[str, str] = fresh.setdefault("headers", {})
    if API_KEY_HEADER not in headers:
        return fresh
    timestamp = str(int(time.time()) if now is None else now)
    headers[TIMESTAMP_HEADER] = timestamp
    headers[SIGNATURE_HEADER] = sign(
        secret, timestamp, event_method(fresh), event_path(fresh), raw_body(fresh)
    )
    context = fresh.get("requestContext")
    if isinstance(context, dict):
        context["timeEpoch"] = int(timestamp) * 1000
        context["time"] = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(int(timestamp)))
    return fresh


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-sign sample API events (in place).")
    parser.add_argument("events", nargs="+", type=Path, help="event JSON files")
    parser.add_argument("--secret", default=DEMO_SECRET, help="merchant secret")
    parser.add_argument("--now", type=int, default=None, help="unix timestamp to sign with")
    parser.add_argument(
        "--stdout", action="store_true", help="print the signed event instead of rewriting"
    )
    args = parser.parse_args(argv)
    for path in args.events:
        event = json.loads(path.read_text(encoding="utf-8"))
        signed = resign_event(event, secret=args.secret, now=args.now)
        text = json.dumps(signed, indent=2, ensure_ascii=False) + "\n"
        if args.stdout:
            sys.stdout.write(text)
        else:
            path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
