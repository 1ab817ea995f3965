"""The Runtime API and Extensions API of one environment, spoken over real HTTP.

No runtime process here: the tests play the runtime and the extensions themselves, so each
protocol rule (headers, status codes, phase transitions) is checked on its own.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from local.runtime_api import MAX_RESPONSE, Endpoint, FunctionInfo, Invocation, Sandbox

RUNTIME = "/2018-06-01/runtime"
EXTENSION = "/2020-01-01/extension"
INFO = FunctionInfo("EchoFunction", "$LATEST", "app.handler", "123456789012")
ARN = "arn:aws:lambda:us-east-1:123456789012:function:EchoFunction"

Reply = tuple[int, dict[str, str], Any]


class Api:
    def __init__(self, endpoint: Endpoint) -> None:
        self.address = endpoint.address
        self.pool = ThreadPoolExecutor(max_workers=8)

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Reply:
        host, port = self.address.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, data, headers or {})
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        parsed: Any = raw
        if response.getheader("Content-Type") == "application/json":
            parsed = json.loads(raw)
        return response.status, dict(response.getheaders()), parsed

    def background(self, method: str, path: str, **kw: Any) -> Future[Reply]:
        return self.pool.submit(self.call, method, path, **kw)

    def register(self, name: str, events: list[str], **headers: str) -> Reply:
        return self.call(
            "POST",
            f"{EXTENSION}/register",
            {"events": events},
            {"Lambda-Extension-Name": name, **headers},
        )


@pytest.fixture()
def sandbox() -> Iterator[tuple[Sandbox, Api, list[tuple[str, float]]]]:
    completed: list[tuple[str, float]] = []
    box = Sandbox(
        INFO,
        external_names=frozenset({"probe"}),
        on_complete=lambda inv, post: completed.append((inv.request_id, post)),
    )
    endpoint = Endpoint(box, "test")
    api = Api(endpoint)
    try:
        yield box, api, completed
    finally:
        endpoint.close()
        api.pool.shutdown(wait=True)


def _invocation(request_id: str = "req-1", payload: bytes = b'{"a": 1}') -> Invocation:
    return Invocation(request_id, ARN, payload, timeout_s=3.0)


def _ready(box: Sandbox, api: Api) -> Future[Reply]:
    """The runtime's first `next` (INIT completes); returns its pending call."""
    pending = api.background("GET", f"{RUNTIME}/invocation/next")
    assert box.wait_init(5) == "ready"
    return pending


def test_invocation_round_trip_headers_and_payload(sandbox: Any) -> None:
    box, api, completed = sandbox
    pending = _ready(box, api)
    invocation = _invocation()
    before_ms = time.time() * 1000
    assert box.dispatch(invocation)
    status, headers, body = pending.result(5)
    assert status == 200 and body == {"a": 1}
    assert headers["Lambda-Runtime-Aws-Request-Id"] == "req-1"
    assert headers["Lambda-Runtime-Invoked-Function-Arn"] == ARN
    assert headers["Content-Type"] == "application/json"
    deadline = int(headers["Lambda-Runtime-Deadline-Ms"])
    assert before_ms + 2500 < deadline < before_ms + 3500  # now + the 3 s timeout, epoch ms
    trace = headers["Lambda-Runtime-Trace-Id"]
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=1", trace)
    assert not box.dispatch(_invocation("req-2"))  # busy: one invocation at a time
    reply = api.call("POST", f"{RUNTIME}/invocation/req-1/response", b'{"ok": true}')
    assert reply[0] == 202 and reply[2] == {"status": "OK"}
    assert box.wait_answer(invocation) == "done" and invocation.result == b'{"ok": true}'
    again = api.call("POST", f"{RUNTIME}/invocation/req-1/response", b"{}")
    assert again[0] == 400 and again[2]["errorType"] == "InvalidRequestID"
    assert not box.idle() and completed == []  # complete only once the runtime asks again
    api.background("GET", f"{RUNTIME}/invocation/next")
    _wait(lambda: completed != [])
    assert completed[0][0] == "req-1" and box.idle()


def test_error_payloads_pass_through(sandbox: Any) -> None:
    box, api, _ = sandbox
    pending = _ready(box, api)
    invocation = _invocation()
    box.dispatch(invocation)
    pending.result(5)
    error = {"errorMessage": "nope", "errorType": "ValueError", "stackTrace": ["x"]}
    headers = {"Lambda-Runtime-Function-Error-Type": "ValueError"}
    status, _, _ = api.call("POST", f"{RUNTIME}/invocation/req-1/error", error, headers)
    assert status == 202 and invocation.error == error and invocation.result is None
    pending = api.background("GET", f"{RUNTIME}/invocation/next")
    _wait(box.idle)
    second = _invocation("req-2")
    box.dispatch(second)
    pending.result(5)
    headers = {"Lambda-Runtime-Function-Error-Type": "Runtime.Custom"}
    api.call("POST", f"{RUNTIME}/invocation/req-2/error", b"not json \xff", headers)
    assert second.error == {"errorType": "Runtime.Custom", "errorMessage": "not json \ufffd"}


def test_init_error_is_reported_and_only_during_init(sandbox: Any) -> None:
    box, api, _ = sandbox
    error = {"errorMessage": "Unable to import module 'app'", "errorType": "Runtime.Import"}
    headers = {"Lambda-Runtime-Function-Error-Type": "Runtime.Import"}
    assert api.call("POST", f"{RUNTIME}/init/error", error, headers)[0] == 202
    assert box.wait_init(1) == "error" and box.init_error == error
    late = Sandbox(INFO)
    endpoint = Endpoint(late, "late")
    try:
        other = Api(endpoint)
        other.background("GET", f"{RUNTIME}/invocation/next")
        assert late.wait_init(5) == "ready"
        assert other.call("POST", f"{RUNTIME}/init/error", error, headers)[0] == 403
        other.pool.shutdown(wait=False)
    finally:
        endpoint.close()


def test_next_before_answering_and_unknown_paths_are_refused(sandbox: Any) -> None:
    box, api, _ = sandbox
    pending = _ready(box, api)
    box.dispatch(_invocation())
    pending.result(5)
    status, _, body = api.call("GET", f"{RUNTIME}/invocation/next")
    assert status == 403 and body["errorType"] == "InvalidStateTransition"
    status, _, body = api.call("GET", "/2018-06-01/runtime/nope")
    assert status == 404 and body["errorType"] == "NotFound"


def test_oversized_response_is_413_and_a_function_error(sandbox: Any) -> None:
    box, api, _ = sandbox
    pending = _ready(box, api)
    invocation = _invocation()
    box.dispatch(invocation)
    pending.result(5)
    host, port = api.address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", f"{RUNTIME}/invocation/req-1/response")
    conn.putheader("Content-Length", str(MAX_RESPONSE + 1))  # the body is never sent or read
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["errorType"] == "RequestEntityTooLarge"
    conn.close()
    assert invocation.error is not None
    assert invocation.error["errorType"] == "Function.ResponseSizeTooLarge"


def test_register_answers_like_lambda(sandbox: Any) -> None:
    _, api, _ = sandbox
    status, headers, body = api.register("telemetry", ["INVOKE"])
    assert status == 200
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["Lambda-Extension-Identifier"])
    assert body == {
        "functionName": "EchoFunction",
        "functionVersion": "$LATEST",
        "handler": "app.handler",
    }
    with_account = api.register("second", [], **{"Lambda-Extension-Accept-Feature": "accountId"})
    assert with_account[2]["accountId"] == "123456789012"
    for name, events, error_type in (
        ("third", ["INVOKE", "SHUTDOWN"], "Extension.InvalidEventType"),  # internal: no SHUTDOWN
        ("third", ["BOGUS"], "Extension.InvalidEventType"),
        ("telemetry", ["INVOKE"], "Extension.InvalidExtensionState"),  # name taken
        ("", ["INVOKE"], "Extension.InvalidExtensionName"),
    ):
        status, _, body = api.register(name, events)
        assert (status, body["errorType"]) == (403, error_type), name
    status, _, body = api.register("probe", ["INVOKE", "SHUTDOWN"])  # external: allowed
    assert status == 200
    status, _, body = api.call("GET", f"{EXTENSION}/event/next")
    assert (status, body["errorType"]) == (403, "Extension.MissingExtensionIdentifier")
    unknown = {"Lambda-Extension-Identifier": "nope"}
    status, _, body = api.call("GET", f"{EXTENSION}/event/next", headers=unknown)
    assert (status, body["errorType"]) == (403, "Extension.UnknownExtensionIdentifier")


def test_invoke_phase_waits_for_every_extension(sandbox: Any) -> None:
    box, api, completed = sandbox
    ext_id = api.register("telemetry", ["INVOKE"])[1]["Lambda-Extension-Identifier"]
    ext = {"Lambda-Extension-Identifier": ext_id}
    runtime_next = api.background("GET", f"{RUNTIME}/invocation/next")
    assert box.wait_init(0.3) == "timeout"  # the extension has not called next yet
    assert api.register("late", ["INVOKE"])[2]["errorType"] == "Extension.RegistrationClosed"
    ext_next = api.background("GET", f"{EXTENSION}/event/next", headers=ext)
    assert box.wait_init(5) == "ready"
    invocation = _invocation()
    box.dispatch(invocation)
    status, headers, event = ext_next.result(5)
    assert status == 200 and headers["Lambda-Extension-Event-Identifier"]
    assert event["eventType"] == "INVOKE" and event["requestId"] == "req-1"
    assert event["invokedFunctionArn"] == ARN and event["deadlineMs"] > time.time() * 1000
    assert event["tracing"]["type"] == "X-Amzn-Trace-Id"
    runtime_next.result(5)
    api.call("POST", f"{RUNTIME}/invocation/req-1/response", b"1")
    assert invocation.result == b"1"  # the caller has its answer...
    api.background("GET", f"{RUNTIME}/invocation/next")
    time.sleep(0.3)
    assert not box.idle() and completed == []  # ...the invocation is not over yet
    api.background("GET", f"{EXTENSION}/event/next", headers=ext)
    _wait(lambda: completed != [])
    assert box.idle() and 0.25 < completed[0][1] < 2  # its post-runtime time


def test_external_extension_gets_shutdown(sandbox: Any) -> None:
    box, api, _ = sandbox
    ext_id = api.register("probe", ["SHUTDOWN"])[1]["Lambda-Extension-Identifier"]
    ext = {"Lambda-Extension-Identifier": ext_id}
    first = api.background("GET", f"{EXTENSION}/event/next", headers=ext)
    _ready(box, api)
    targets = box.shutdown("spindown", 12345)
    status, _, event = first.result(5)
    assert event == {"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": 12345}
    assert not box.wait_extensions(targets, time.monotonic() + 0.2)  # still cleaning up
    api.background("GET", f"{EXTENSION}/event/next", headers=ext)
    assert box.wait_extensions(targets, time.monotonic() + 5)


def test_extension_errors(sandbox: Any) -> None:
    box, api, _ = sandbox
    ext_id = api.register("telemetry", ["INVOKE"])[1]["Lambda-Extension-Identifier"]
    headers = {
        "Lambda-Extension-Identifier": ext_id,
        "Lambda-Extension-Function-Error-Type": "Extension.ConnectFailed",
    }
    status, _, body = api.call("POST", f"{EXTENSION}/init/error", {"errorMessage": "x"}, headers)
    assert (status, body) == (202, {"status": "OK"})
    assert box.wait_init(1) == "error"
    assert box.init_error is not None and box.init_error["errorType"] == "Extension.ConnectFailed"
    status, _, body = api.call("GET", f"{EXTENSION}/event/next", headers=headers)
    assert (status, body["errorType"]) == (403, "Extension.InvalidExtensionState")


def test_death_fails_the_running_invocation_and_frees_waiters(sandbox: Any) -> None:
    box, api, _ = sandbox
    pending = _ready(box, api)
    invocation = _invocation()
    box.dispatch(invocation)
    pending.result(5)
    waiter = threading.Thread(target=box.wait_answer, args=(invocation,))
    waiter.start()
    box.mark_dead("Runtime exited with error: signal: killed")
    waiter.join(2)
    assert not waiter.is_alive()
    assert invocation.error == {
        "errorType": "Runtime.ExitError",
        "errorMessage": "RequestId: req-1 Error: Runtime exited with error: signal: killed",
    }
    assert not box.dispatch(_invocation("req-2"))


def _wait(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
