"""API Gateway HTTP API emulator: HTTP request → payload 2.0 event → Lambda → HTTP response.

Routes come only from the template's HttpApi events. Matching follows HTTP API: the most
specific route wins (literal segments over {params}, {proxy+} last, exact method over
ANY); `$default` catches the rest. Without a `$default` route, a known path with the wrong
method still reaches that path's function with routeKey "$default" so the function can
answer the contract's 405 (real HTTP API would answer 404 there; our template has a
`$default` route, so this only matters for other templates).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import time
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

from local.aws import Environ, QuietHandler, StartResponse, serve_wsgi
from local.faults import FAULTS, FaultError
from local.openapi import OPENAPI_PATH, serve_openapi
from local.runtime import LambdaRuntime, TooManyRequestsError, UnknownFunctionError
from local.template import ACCOUNT, Route, Template

MAX_BODY = 10 * 1024 * 1024  # API Gateway's payload limit; functions enforce their own
MAX_REQUEST_HEAD = 10240  # HTTP API quota: request line and header values, in bytes
FAULTS_PATH = "/_local/faults"


@dataclass(frozen=True)
class _Compiled:
    route: Route
    pattern: re.Pattern[str]
    score: tuple[int, int, int]  # higher is more specific


def _compile(route: Route) -> _Compiled:
    parts, literals = [], 0
    greedy = 0
    for seg in route.path.strip("/").split("/"):
        if seg.startswith("{") and seg.endswith("+}"):
            parts.append(f"(?P<{seg[1:-2]}>.+)")
            greedy = 1
        elif seg.startswith("{") and seg.endswith("}"):
            parts.append(f"(?P<{seg[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(seg))
            literals += 1
    pattern = re.compile("^/" + "/".join(parts) + "/?$" if parts != [""] else "^/$")
    return _Compiled(route, pattern, (1 - greedy, literals, int(route.method != "ANY")))


_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_ERROR_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "internal_error",
    502: "bad_gateway",
    504: "gateway_timeout",
}


def trace_id_of(traceparent: str) -> str:
    """The W3C trace id of an incoming `traceparent`, else a fresh one (32 lowercase hex)."""
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match and match.group(1) != "ff" and match.group(2) != "0" * 32:
        return match.group(2)
    return uuid.uuid4().hex


def error_body(status: int, message: str, trace_id: str) -> bytes:
    """The emulator's own errors, in the platform's error shape."""
    code = _ERROR_CODES.get(status, "error")
    return json.dumps({"error": {"code": code, "message": message}, "trace_id": trace_id}).encode()


def _json(
    start_response: StartResponse,
    status: int,
    body: Any,
    trace_id: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} {_reason(status)}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("X-Trace-ID", trace_id),
            *(headers or []),
        ],
    )
    return [data]


def _error(
    start_response: StartResponse,
    status: int,
    message: str,
    trace_id: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = json.loads(error_body(status, message, trace_id))
    return _json(start_response, status, body, trace_id, headers)


class ApiRequestHandler(QuietHandler):
    """Errors the HTTP layer answers before the app runs (a 431 for an oversized header line,
    a 414 request line, 400 garbage) get the JSON error shape too, not http.server's HTML."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        data = error_body(code, message or _reason(code), uuid.uuid4().hex)
        self.close_connection = True
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Trace-ID", json.loads(data)["trace_id"])
            self.send_header("Connection", "close")
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(data)
        except OSError:
            pass


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class ApiGateway:
    """WSGI app; `runtime` runs the functions in-process."""

    def __init__(self, template: Template, runtime: LambdaRuntime) -> None:
        self.runtime = runtime
        self.routes = [_compile(r) for r in template.routes if r.path != "$default"]
        self.default = next((r for r in template.routes if r.path == "$default"), None)

    def match(self, method: str, path: str) -> tuple[Route, str, dict[str, str]] | None:
        """(route, routeKey, pathParameters) for a request, or None (→ 404)."""
        hits = [(c, m) for c in self.routes if (m := c.pattern.match(path))]
        allowed = [(c, m) for c, m in hits if c.route.method in (method, "ANY")]
        if allowed:
            c, m = max(allowed, key=lambda hit: hit[0].score)
            params = {k: unquote(v) for k, v in m.groupdict().items()}
            return c.route, f"{c.route.method} {c.route.path}", params
        if self.default is not None:
            return self.default, "$default", {}
        if hits:  # known path, wrong method: let the function answer 405
            return hits[0][0].route, "$default", {}
        return None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        trace_id = trace_id_of(environ.get("HTTP_TRACEPARENT", ""))
        try:
            return self._handle(environ, start_response, trace_id)
        except Exception:  # never werkzeug's HTML 500 page
            traceback.print_exc(file=sys.stderr)
            return _error(start_response, 500, "Internal Server Error", trace_id)

    def _handle(
        self, environ: Environ, start_response: StartResponse, trace_id: str
    ) -> list[bytes]:
        if _request_head_size(environ) > MAX_REQUEST_HEAD:
            message = f"Request line and headers exceed {MAX_REQUEST_HEAD} bytes"
            return _error(start_response, 431, message, trace_id)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            return _error(start_response, 413, "Request Entity Too Large", trace_id)
        body = environ["wsgi.input"].read(length) if length else b""
        method = environ["REQUEST_METHOD"]
        raw_path = (environ.get("RAW_URI") or environ.get("PATH_INFO") or "/").split("?", 1)[0]
        # --- the contract document (local/openapi.py): the stack's own route, not the API's
        if method == "GET" and raw_path == OPENAPI_PATH:
            return list(serve_openapi(environ, start_response))
        # ---
        if raw_path.rstrip("/") == FAULTS_PATH:
            return self._faults(method, body, start_response, trace_id)
        found = self.match(method, raw_path)
        if found is None:
            return _error(start_response, 404, "Not Found", trace_id)
        route, route_key, params = found
        event = build_event(environ, raw_path, route_key, params, body)
        try:
            result, error = self.runtime.invoke(route.function, event)
        except TooManyRequestsError:
            retry = [("Retry-After", "1")]
            return _error(start_response, 429, "Too Many Requests", trace_id, retry)
        if error is not None:
            # What CloudWatch Logs would show for the crashed invocation.
            print(json.dumps({"function": route.function, **error}), file=sys.stderr)
            if error.get("errorType") == "Sandbox.Timedout":
                return _error(start_response, 504, "Endpoint request timed out", trace_id)
            return _error(start_response, 500, "Internal Server Error", trace_id)
        try:
            status, headers, payload = to_http(result)
        except (TypeError, ValueError, KeyError, binascii.Error):
            message = "The function returned an invalid proxy response"
            return _error(start_response, 502, message, trace_id)
        headers.append(("apigw-requestid", event["requestContext"]["requestId"]))
        start_response(f"{status} {_reason(status)}", headers)
        return [payload]

    def _faults(
        self, method: str, body: bytes, start_response: StartResponse, trace_id: str
    ) -> list[bytes]:
        """`/_local/faults`: the local stack's function fault injection (see local.faults)."""
        if method == "GET":
            return _json(start_response, 200, {"data": FAULTS.snapshot()}, trace_id)
        if method == "DELETE":
            return _json(start_response, 200, {"deleted": FAULTS.clear()}, trace_id)
        if method != "POST":
            return _error(start_response, 405, "Use GET, POST or DELETE", trace_id)
        try:
            spec = json.loads(body or b"null")
            if isinstance(spec, dict) and isinstance(spec.get("function"), str):
                spec["function"] = self.runtime.function(spec["function"]).logical_id
            fault = FAULTS.add(spec)
        except UnknownFunctionError as exc:
            return _error(start_response, 400, f"unknown function {exc.args[0]}", trace_id)
        except (ValueError, FaultError) as exc:
            return _error(start_response, 400, str(exc), trace_id)
        return _json(start_response, 201, fault.to_json(), trace_id)


def _request_head_size(environ: Environ) -> int:
    """Request line plus header values, as API Gateway counts them for its 10 KB quota."""
    line = len(environ.get("REQUEST_METHOD", "")) + len(environ.get("RAW_URI") or "")
    values = sum(
        len(str(v)) for k, v in environ.items() if k.startswith("HTTP_") or k == "CONTENT_TYPE"
    )
    return line + values


def _headers(environ: Environ) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out[key[5:].replace("_", "-").lower()] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            out[key.replace("_", "-").lower()] = value
    return out


def build_event(
    environ: Environ, raw_path: str, route_key: str, params: dict[str, str], body: bytes
) -> dict[str, Any]:
    """The HTTP API payload format 2.0 event for one request."""
    headers = _headers(environ)
    cookie = headers.pop("cookie", "")
    source_ip = environ.get("REMOTE_ADDR", "127.0.0.1")
    headers.setdefault("x-forwarded-for", source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    headers.setdefault("x-forwarded-port", str(environ.get("SERVER_PORT", "")))
    query = environ.get("QUERY_STRING", "")
    qs: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        qs[k] = f"{qs[k]},{v}" if k in qs else v  # HTTP API comma-joins repeated keys
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "local",
            "domainName": headers.get("host", "localhost").split(":")[0],
            "domainPrefix": "local",
            "http": {
                "method": environ["REQUEST_METHOD"],
                "path": raw_path,
                "protocol": environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": base64.b64encode(uuid.uuid4().bytes[:10]).decode(),
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookie:
        event["cookies"] = [c.strip() for c in cookie.split(";") if c.strip()]
    if qs:
        event["queryStringParameters"] = qs
    if params:
        event["pathParameters"] = params
    if body:
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


def to_http(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Map a proxy result as HTTP API does (a result without statusCode is a 200 JSON body)."""
    if not isinstance(result, dict) or "statusCode" not in result:
        data = json.dumps(result).encode()
        return 200, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))], data
    status = int(result["statusCode"])
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    for k, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((str(k), str(v)) for v in values)
    headers.extend(("Set-Cookie", str(c)) for c in result.get("cookies") or [])
    raw = result.get("body") or ""
    if not isinstance(raw, str):
        raise TypeError("body must be a string")
    data = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
    names = {k.lower() for k, _ in headers}
    if "content-type" not in names:
        headers.append(("Content-Type", "application/json"))
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(data))))
    return status, headers, data


@dataclass
class ApiHandle:
    url: str
    port: int
    app: ApiGateway
    _server: Any
    _thread: Any

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_api(template: Template, runtime: LambdaRuntime, port: int = 0) -> ApiHandle:
    """Serve the API on 127.0.0.1:port (0 = ephemeral); raises OSError if the port is taken."""
    app = ApiGateway(template, runtime)
    server, thread = serve_wsgi(app, port, ApiRequestHandler)
    return ApiHandle(
        f"http://127.0.0.1:{server.server_port}", server.server_port, app, server, thread
    )
