"""Signed API Gateway HTTP API (payload 2.0) events, as API Gateway would deliver them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from payments.auth import signed_headers

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
    all_headers = {"content-type": "application/json"}
    if signed:
        auth = signed_headers(key, secret, method, path, raw, timestamp=timestamp)
        all_headers.update({k.lower(): v for k, v in auth.items()})
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
                "userAgent": "local",
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
