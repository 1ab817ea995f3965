"""API Gateway HTTP API (payload 2.0) events in, Lambda proxy results out, through the
Powertools Event Handler. The one place where typed errors become HTTP responses; business
code never sees events.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from payments.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PaymentError,
)
from payments.observability import current_trace_id
from payments.observability.logging import logger

__all__ = ["ApiRequest", "JsonResponse", "Router", "error_body", "respond"]

JsonResponse = Response[str]

MAX_BODY_BYTES = 32 * 1024


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)
    lambda_context: Any = field(default=None, repr=False, compare=False)
    query: dict[str, str] = field(default_factory=dict)

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


def _request(app: APIGatewayHttpResolver, path_params: dict[str, str]) -> ApiRequest:
    event = app.current_event
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    return ApiRequest(
        method=event.http_method.upper(),
        path=event.raw_path or event.path,
        headers={k.lower(): v for k, v in (event.headers or {}).items()},
        body=body,
        path_params=path_params,
        lambda_context=app.lambda_context,
        query=dict(event.query_string_parameters or {}),
    )


def respond(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JsonResponse:
    """A JSON response carrying the request's trace id in the header and the body."""
    trace_id = current_trace_id()
    payload = {**body, "trace_id": trace_id}
    return Response(
        status_code=status,
        content_type="application/json",
        body=json.dumps(payload, separators=(",", ":")),
        headers={"X-Trace-ID": trace_id, **(headers or {})},
    )


def error_body(err: PaymentError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.details:
        error["details"] = err.details
    return {"error": error}


def error_response(err: PaymentError) -> JsonResponse:
    return respond(err.status, error_body(err), err.headers)


RouteHandler = Callable[[ApiRequest], JsonResponse]


class Router:
    """Powertools' HTTP API resolver, with every error mapped to a response in one place.

    Routes are written with the template's `{param}` syntax. `served_elsewhere` lists the
    routes of the API's other functions, so the `$default` catch-all can tell "wrong method"
    (405) from "no such path" (404) for them too.
    """

    def __init__(self, served_elsewhere: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.app = APIGatewayHttpResolver()
        self._templates: set[tuple[str, str]] = set(served_elsewhere)
        self.app.exception_handler(PaymentError)(error_response)
        self.app.exception_handler(Exception)(self._unexpected)
        self.app.not_found(self._not_found)

    def route(self, method: str, template: str) -> Callable[[RouteHandler], RouteHandler]:
        def register(fn: RouteHandler) -> RouteHandler:
            def endpoint(**path_params: str) -> JsonResponse:
                return fn(_request(self.app, path_params))

            self.app.route(_PARAM.sub(r"<\1>", template), method=method)(endpoint)
            self._templates.add((method, template))
            return fn

        return register

    def resolve(self, event: dict[str, Any], lambda_context: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = self.app.resolve(event, lambda_context)
        return result

    def _not_found(self, _error: Exception) -> JsonResponse:
        path = self.app.current_event.raw_path or self.app.current_event.path
        allowed = sorted({m for (m, t) in self._templates if _template_matches(t, path)})
        if allowed:
            return error_response(MethodNotAllowed(headers={"Allow": ", ".join(allowed)}))
        return error_response(NotFound("No such route."))

    @staticmethod
    def _unexpected(_error: Exception) -> JsonResponse:
        logger.exception("unhandled error")
        return error_response(PaymentError())


_PARAM = re.compile(r"\{([^/{}]+)\}")


def _template_matches(template: str, path: str) -> bool:
    parts = re.split(r"(\{[^/{}]+\})", template)
    pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
    return re.fullmatch(pattern, path) is not None
