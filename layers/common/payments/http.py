"""API Gateway HTTP API (payload 2.0) events in, Lambda proxy results out.

The one place where typed errors become HTTP responses. Business code never sees events.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from payments.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PaymentError,
)
from payments.observability import current_trace_id
from payments.observability.logging import logger

MAX_BODY_BYTES = 32 * 1024


@dataclass(frozen=True)
class ApiRequest:
    method: str
    route: str
    path: str
    headers: dict[str, str]
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)
    lambda_context: Any = field(default=None, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; malformed JSON or another type is invalid_request."""
        if len(self.body) > MAX_BODY_BYTES:
            raise PayloadTooLarge()
        try:
            value = json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest(
                "The body is not valid JSON.", details=[{"field": "body", "issue": "malformed"}]
            ) from None
        if not isinstance(value, dict):
            raise InvalidRequest(
                "The body must be a JSON object.",
                details=[{"field": "body", "issue": "must be an object"}],
            )
        return value


def parse_event(event: dict[str, Any], lambda_context: Any = None) -> ApiRequest:
    http = event["requestContext"]["http"]
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    route_key = event.get("routeKey", "$default")
    route = route_key.split(" ", 1)[1] if " " in route_key else route_key
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    return ApiRequest(
        method=http["method"].upper(),
        route=route,
        path=event.get("rawPath") or http.get("path", "/"),
        headers=headers,
        body=body,
        path_params=dict(event.get("pathParameters") or {}),
        lambda_context=lambda_context,
    )


def respond(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    trace_id = current_trace_id()
    payload = {**body, "trace_id": trace_id}
    return {
        "statusCode": status,
        "headers": {
            "Content-Type": "application/json",
            "X-Trace-ID": trace_id,
            **(headers or {}),
        },
        "body": json.dumps(payload, separators=(",", ":")),
    }


def error_body(err: PaymentError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.details:
        error["details"] = err.details
    return {"error": error}


def error_response(err: PaymentError) -> dict[str, Any]:
    return respond(err.status, error_body(err), err.headers)


RouteHandler = Callable[[ApiRequest], dict[str, Any]]


class Router:
    """Routes (method, route template) to a function; maps every error in one place."""

    def __init__(self, served_elsewhere: frozenset[tuple[str, str]] = frozenset()) -> None:
        self._routes: dict[tuple[str, str], RouteHandler] = {}
        # Routes of other functions of the same API, so the `$default` catch-all can tell
        # "wrong method" (405) from "no such path" (404) for them too.
        self._elsewhere = served_elsewhere

    def route(self, method: str, template: str) -> Callable[[RouteHandler], RouteHandler]:
        def register(fn: RouteHandler) -> RouteHandler:
            self._routes[(method, template)] = fn
            return fn

        return register

    def _match(self, request: ApiRequest) -> RouteHandler:
        handler = self._routes.get((request.method, request.route))
        if handler:
            return handler
        # `$default` (or an unknown route key): decide 404 vs 405 from the raw path.
        routes = [*self._routes, *self._elsewhere]
        allowed = [m for (m, t) in routes if _template_matches(t, request.path)]
        if allowed:
            raise MethodNotAllowed(headers={"Allow": ", ".join(sorted(allowed))})
        raise NotFound("No such route.")

    def resolve(self, event: dict[str, Any], lambda_context: Any = None) -> dict[str, Any]:
        try:
            request = parse_event(event, lambda_context)
            return self._match(request)(request)
        except PaymentError as err:
            return error_response(err)
        except Exception:
            logger.exception("unhandled error")
            return error_response(PaymentError())


def _template_matches(template: str, path: str) -> bool:
    pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
    return re.fullmatch(pattern, path) is not None
