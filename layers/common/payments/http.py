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

from payments.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PaymentError,
    UnsupportedMediaType,
)
from payments.observability import current_trace_id
from payments.observability.logging import logger

__all__ = ["ApiRequest", "JsonResponse", "Router", "error_body", "respond"]

JsonResponse = Response[str]

MAX_BODY_BYTES = 32 * 1024
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)
    lambda_context: Any = field(default=None, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (see `parse_json_object`)."""
        return parse_json_object(self.body, self.header("content-type"))


def parse_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A request body as a JSON object, or the contract's 4xx for it (SPEC §2).

    Checked in this order, each before anything is parsed or stored: size (413), presence
    (400), media type (415), UTF-8, nesting depth, then JSON itself with duplicate keys and
    the non-standard NaN/Infinity refused (400 invalid_request).
    """
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    if not body:
        raise _invalid_body("A JSON object body is required.", "required")
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_body("The body is not valid UTF-8.", "not UTF-8") from None
    if nesting_depth(text, stop_above=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise _invalid_body(
            f"The body is nested deeper than {MAX_JSON_DEPTH} levels.",
            f"nested deeper than {MAX_JSON_DEPTH} levels",
        )
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as dup:
        raise InvalidRequest(
            "The body repeats a key.", details=[{"field": dup.field, "issue": "duplicate key"}]
        ) from None
    except json.JSONDecodeError as err:
        issue = f"malformed JSON at line {err.lineno} column {err.colno}"
        raise _invalid_body("The body is not valid JSON.", issue) from None
    except ValueError:  # NaN/Infinity, or an integer beyond Python's digit limit
        raise _invalid_body("The body is not valid JSON.", "malformed JSON") from None
    if not isinstance(value, dict):
        raise _invalid_body("The body must be a JSON object.", "must be an object")
    return value


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json`, optionally with `charset=utf-8` (JSON is UTF-8: RFC 8259)."""
    if not content_type:
        return False
    media_type, *params = (part.strip() for part in content_type.split(";"))
    if media_type.lower() != "application/json":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            return False
    return True


_SIGNIFICANT = re.compile(r'["\\\[\]{}]')


def nesting_depth(text: str, *, stop_above: int | None = None) -> int:
    """How deeply arrays/objects nest in JSON text, brackets inside strings ignored.

    Linear in the text (it jumps between brackets, quotes and backslashes), so it can run
    on any input before `json.loads`, whose recursion would blow up on deep nesting.
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1
    for match in _SIGNIFICANT.finditer(text):
        pos, char = match.start(), match.group()
        if pos == escaped_at:
            continue
        if in_string:
            if char == "\\":
                escaped_at = pos + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if stop_above is not None and deepest > stop_above:
                break
        elif char in "]}":
            depth -= 1
    return deepest


class _DuplicateKey(ValueError):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse a repeated key: RFC 8259 leaves its meaning open, and taking the last one
    silently turned `{"amount": 1, "amount": 600000}` into a 600000 charge."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise _DuplicateKey(_field_name(key))
        value[key] = item
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _field_name(name: str) -> str:
    """A client-supplied key as it may appear in an error: bounded, never the whole input."""
    return name if len(name) <= 64 else name[:61] + "..."


def _invalid_body(message: str, issue: str) -> InvalidRequest:
    return InvalidRequest(message, details=[{"field": "body", "issue": issue}])


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
        raise _invalid_body("The body is not valid base64.", "malformed base64") from None


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
