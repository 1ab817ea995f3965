"""API Gateway HTTP API (payload 2.0) events in, Lambda proxy results out, through the
Powertools Event Handler. The one place where typed errors become HTTP responses; business
code never sees events.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from payments.errors import MethodNotAllowed, NotFound, PaymentError
from payments.jsonbody import invalid_body, parse_json_object
from payments.observability import current_trace_id
from payments.observability.logging import logger

__all__ = ["ApiRequest", "JsonResponse", "Router", "error_body", "respond"]

JsonResponse = Response[str]


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
        """The body as a JSON object (see `parse_json_object`)."""
        return parse_json_object(self.body, self.header("content-type"))


def _request(app: APIGatewayHttpResolver, path_params: dict[str, str]) -> ApiRequest:
    event = app.current_event
    body = _raw_body(event.get("body") or "", bool(event.get("isBase64Encoded")))
    return ApiRequest(
        method=event.http_method.upper(),
        path=event.raw_path or event.path,
        headers={k.lower(): v for k, v in (event.headers or {}).items()},
        body=body,
        path_params={name: _identifier(value) for name, value in path_params.items()},
        lambda_context=app.lambda_context,
        query=dict(event.query_string_parameters or {}),
    )


# Identifiers in paths (pay_..., ord_...) are short and plain. Any other value names nothing:
# it reaches the route as "" so the route authenticates first and then answers its own 404,
# and an over-long or odd value never reaches a store key (DynamoDB caps keys at 2 KiB).
_IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _identifier(value: str) -> str:
    return value if _IDENTIFIER.fullmatch(value) else ""


def _raw_body(raw: str, is_base64: bool) -> bytes:
    if not is_base64:
        return raw.encode("utf-8", "surrogatepass")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_body("The body is not valid base64.", "malformed base64") from None


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
        event = self.app.current_event
        path = event.raw_path or event.path
        allowed = sorted({m for (m, t) in self._templates if _template_matches(t, path)})
        # The method is allowed but the resolver found no route: the path has a character
        # its parameters do not take (e.g. a raw `"`), so it names nothing. 404, not 405.
        if allowed and event.http_method.upper() not in allowed:
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
