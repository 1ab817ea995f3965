"""API Gateway HTTP API emulator: routing, payload 2.0 events, proxy result mapping."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.test import Client

from local.api import ApiGateway, serve_api, to_http
from local.runtime import LambdaRuntime, TooManyRequestsError
from local.template import load_template

TEMPLATE = """\
Resources:
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/echo/
      Handler: app.handler
      Events:
        Get:
          Type: HttpApi
          Properties: {Path: "/items/{item_id}", Method: GET}
        Special:
          Type: HttpApi
          Properties: {Path: /items/special, Method: GET}
        Post:
          Type: HttpApi
          Properties: {Path: /items, Method: post}
        Root:
          Type: HttpApi
          Properties: {Path: /, Method: ANY}
  OtherFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/other/
      Handler: app.handler
      Events:
        Files:
          Type: HttpApi
          Properties: {Path: "/files/{proxy+}", Method: ANY}
"""

ECHO = """\
import json

def handler(event, context):
    if event.get("rawQueryString") == "crash=1":
        raise RuntimeError("secret internals")
    if event.get("rawQueryString") == "bare=1":
        return {"bare": True}
    return {"statusCode": 201, "headers": {"X-Route": event["routeKey"]},
            "cookies": ["a=1", "b=2"], "body": json.dumps(event)}
"""

OTHER = """\
def handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "application/octet-stream"},
            "body": "AAEC", "isBase64Encoded": True}
"""


@pytest.fixture()
def api(tmp_path: Path) -> ApiGateway:
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    for name, code in (("echo", ECHO), ("other", OTHER)):
        (tmp_path / "fn" / name).mkdir(parents=True)
        (tmp_path / "fn" / name / "app.py").write_text(code)
    template = load_template(tmp_path / "template.yaml")
    return ApiGateway(template, LambdaRuntime(template))


def test_path_parameters_headers_query_and_cookies(api: ApiGateway) -> None:
    resp = Client(api, use_cookies=False).get(
        "/items/it%201?a=1&a=2&b=",
        headers=[("X-Custom", "v"), ("Cookie", "s=1; t=2")],
    )
    assert resp.status_code == 201
    assert resp.headers["X-Route"] == "GET /items/{item_id}"
    assert resp.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert resp.headers["apigw-requestid"]
    event = json.loads(resp.data)
    assert event["version"] == "2.0"
    assert event["pathParameters"] == {"item_id": "it 1"}
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["rawQueryString"] == "a=1&a=2&b="
    assert event["headers"]["x-custom"] == "v"
    assert "cookie" not in event["headers"]
    assert event["cookies"] == ["s=1", "t=2"]
    ctx = event["requestContext"]
    assert ctx["http"]["method"] == "GET" and ctx["stage"] == "$default"
    assert ctx["routeKey"] == "GET /items/{item_id}" and ctx["apiId"] == "local"
    assert "body" not in event


def test_literal_route_beats_parameter(api: ApiGateway) -> None:
    resp = Client(api).get("/items/special")
    assert resp.headers["X-Route"] == "GET /items/special"


def test_post_body_text_and_binary(api: ApiGateway) -> None:
    client = Client(api)
    event = json.loads(client.post("/items", data=b'{"x": 1}').data)
    assert event["body"] == '{"x": 1}' and event["isBase64Encoded"] is False
    event = json.loads(client.post("/items", data=b"\xff\xfe").data)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\xfe"


def test_wrong_method_reaches_function_as_default(api: ApiGateway) -> None:
    resp = Client(api).delete("/items/1")
    assert resp.headers["X-Route"] == "$default"


TRACE = re.compile(r"^[0-9a-f]{32}$")


def _emulator_error(resp: Any, status: int, code: str) -> str:
    """The emulator's own error: the platform's shape, X-Trace-ID matching trace_id."""
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == "application/json"
    body = json.loads(resp.data if hasattr(resp, "data") else resp.content)
    assert body["error"]["code"] == code and body["error"]["message"]
    assert TRACE.match(body["trace_id"]) and resp.headers["X-Trace-ID"] == body["trace_id"]
    return str(body["trace_id"])


def test_unknown_route_is_404(api: ApiGateway) -> None:
    resp = Client(api).get("/nope/x")
    _emulator_error(resp, 404, "not_found")


def test_errors_carry_the_incoming_trace_id(api: ApiGateway) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = [("traceparent", f"00-{trace}-00f067aa0ba902b7-01")]
    assert _emulator_error(Client(api).get("/nope", headers=headers), 404, "not_found") == trace
    bogus = [("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01")]
    assert _emulator_error(Client(api).get("/nope", headers=bogus), 404, "not_found") != "0" * 32


def test_greedy_and_base64_result(api: ApiGateway) -> None:
    resp = Client(api).put("/files/a/b/c")
    assert resp.status_code == 200 and resp.data == b"\x00\x01\x02"


def test_crash_is_opaque_500_and_bare_result_is_200(
    api: ApiGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client(api)
    crash = client.get("/items/1?crash=1")
    _emulator_error(crash, 500, "internal_error")
    assert b"secret" not in crash.data
    logged = json.loads(capsys.readouterr().err.strip().splitlines()[-1])  # the function's log
    assert logged["function"] == "EchoFunction" and logged["errorType"] == "RuntimeError"
    bare = client.get("/items/1?bare=1")
    assert bare.status_code == 200 and bare.json == {"bare": True}


def test_body_limit(api: ApiGateway) -> None:
    resp = Client(api).post("/items", data=b"x" * (10 * 1024 * 1024 + 1))
    _emulator_error(resp, 413, "payload_too_large")


class _Canned:
    """A runtime answering every invocation with one fixed outcome."""

    def __init__(self, template: Any, outcome: Any) -> None:
        self.template, self.outcome = template, outcome

    def function(self, name: str) -> Any:
        return self.template.find_function(name)

    def invoke(self, name: str, payload: Any) -> tuple[Any, Any]:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def test_timeouts_bad_results_and_throttles(api: ApiGateway) -> None:
    template = api.runtime.template
    timed_out = {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "Task timed out after 3.00 seconds",
    }
    for outcome, status, code in (
        ((None, timed_out), 504, "gateway_timeout"),
        (({"statusCode": 200, "body": {"not": "a string"}}, None), 502, "bad_gateway"),
        (({"statusCode": "two hundred"}, None), 502, "bad_gateway"),
        (({"statusCode": 200, "body": "abc", "isBase64Encoded": True}, None), 502, "bad_gateway"),
        (TooManyRequestsError("EchoFunction"), 429, "too_many_requests"),
    ):
        resp = Client(ApiGateway(template, _Canned(template, outcome))).get("/items/1")  # type: ignore[arg-type]
        _emulator_error(resp, status, code)
    throttled = Client(ApiGateway(template, _Canned(template, TooManyRequestsError("x")))).get("/")  # type: ignore[arg-type]
    assert throttled.headers["Retry-After"] == "1"


def test_oversized_headers_are_json_431(api: ApiGateway) -> None:
    handle = serve_api(api.runtime.template, api.runtime)
    try:
        # Over API Gateway's 10 KB quota for request line + header values: the app answers.
        resp = requests.get(f"{handle.url}/items/7", headers={"X-Big": "a" * 11000}, timeout=5)
        _emulator_error(resp, 431, "request_header_fields_too_large")
        # Over http.server's 64 KB header line limit: answered before the app runs.
        resp = requests.get(f"{handle.url}/items/7", headers={"X-Huge": "a" * 70000}, timeout=5)
        _emulator_error(resp, 431, "request_header_fields_too_large")
        assert requests.get(f"{handle.url}/items/7", timeout=5).status_code == 201
    finally:
        handle.stop()


def test_to_http_defaults() -> None:
    status, headers, data = to_http({"statusCode": 204})
    assert status == 204 and data == b"" and ("Content-Type", "application/json") in headers
    with pytest.raises(TypeError):
        to_http({"statusCode": 200, "body": {"not": "a string"}})
    assert to_http("hi")[2] == b'"hi"'


def test_serves_over_http(api: ApiGateway) -> None:
    handle = serve_api(load_template_for(api), api.runtime)
    try:
        resp = requests.get(f"{handle.url}/items/7", timeout=5)
        assert resp.status_code == 201
        assert resp.json()["pathParameters"] == {"item_id": "7"}
    finally:
        handle.stop()


def load_template_for(api: ApiGateway):  # type: ignore[no-untyped-def]
    return api.runtime.template
