"""Helpers for building signed API Gateway HTTP API v2 events in tests."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from payments.auth import sign

DEMO_KEY, DEMO_SECRET = "mk_demo", "sk_demo_secret"


def api_event(
    method: str,
    route: str,
    *,
    path: str | None = None,
    body: Any = None,
    path_params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    key: str = DEMO_KEY,
    secret: str = DEMO_SECRET,
    timestamp: int | None = None,
    signed: bool = True,
) -> dict[str, Any]:
    path = path or route
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    elif body is None:
        raw = b""
    else:
        raw = json.dumps(body).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    all_headers = {"content-type": "application/json"}
    if signed:
        all_headers.update(
            {
                "x-api-key": key,
                "x-timestamp": ts,
                "x-signature": sign(secret, ts, method, path, raw),
            }
        )
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    return {
        "version": "2.0",
        "routeKey": f"{method} {route}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": all_headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "localhost",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "pytest",
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": f"{method} {route}",
            "stage": "$default",
            "time": "25/Nov/2026:00:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "pathParameters": path_params or {},
        "body": raw.decode(),
        "isBase64Encoded": False,
    }


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
