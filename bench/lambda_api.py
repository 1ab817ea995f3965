"""A minimal Lambda Runtime API + Extensions API on loopback (the real protocol, stdlib only).

Enough of Lambda's lifecycle to exercise the layer's internal extension exactly as on
Lambda, for the tests and the bench (until `local/` serves the same protocol):

* `POST /2020-01-01/extension/register` (only before the runtime's first `next`, as on
  Lambda) answers `Lambda-Extension-Identifier`;
* `GET /2018-06-01/runtime/invocation/next` is held until an invocation is queued *and*
  every registered extension has asked for its next event after the previous invocation
  (the post-invoke wait: the environment is busy until then);
* `GET /2020-01-01/extension/event/next` answers INVOKE when an invocation starts;
* `POST /2018-06-01/runtime/invocation/{id}/response` (and `/error`) completes `invoke()`
  at once: the caller has its response while extensions may still be working.

`timeline` records each step with `time.perf_counter()`; `invoke()` returns the result with
its response time and the post-runtime duration (response -> last extension `next`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RUNTIME_NEXT = "/2018-06-01/runtime/invocation/next"
REGISTER = "/2020-01-01/extension/register"
EXTENSION_NEXT = "/2020-01-01/extension/event/next"


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    deadline_ms: int
    queued: float = field(default_factory=time.perf_counter)
    response: bytes | None = None
    error: bool = False
    responded_at: float | None = None
    extensions_done_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Outcome:
    result: Any
    error: bool
    response_s: float  # queued -> response posted
    post_runtime_s: float | None  # response posted -> every extension asked for next


class FakeLambdaApi:
    """One execution environment's Runtime + Extensions API."""

    def __init__(self, function_name: str = "fn", timeout_s: float = 30.0) -> None:
        self.function_name = function_name
        self.timeout_s = timeout_s
        self.timeline: list[tuple[str, str, float]] = []
        self.extensions: dict[str, str] = {}  # id -> name
        self.registrations: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._queue: deque[Invocation] = deque()
        self._current: Invocation | None = None
        self._seen: dict[str, int] = {}  # extension id -> invocations it has been told of
        self._ready: set[str] = set()  # extensions waiting in next (done with the current)
        self._started = 0
        self._init_done = False
        self._closed = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stalls

            def log_message(self, *args: Any) -> None:
                return

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the runtime or extension went away (stop, kill)
                    self.close_connection = True

            def do_GET(self) -> None:
                if self.path == RUNTIME_NEXT:
                    self._send(*api._runtime_next())
                elif self.path == EXTENSION_NEXT:
                    ext = self.headers.get("Lambda-Extension-Identifier", "")
                    self._send(*api._extension_next(ext))
                else:
                    self._send(404, b"{}", {})

            def do_POST(self) -> None:
                body = self._body()
                if self.path == REGISTER:
                    name = self.headers.get("Lambda-Extension-Name", "")
                    self._send(*api._register(name, json.loads(body or b"{}")))
                elif self.path.startswith("/2018-06-01/runtime/invocation/"):
                    parts = self.path.split("/")
                    api._respond(parts[4], body, error=parts[5] == "error")
                    self._send(202, b"{}", {})
                elif self.path.startswith("/2018-06-01/runtime/init/error"):
                    self._send(202, b"{}", {})
                else:
                    self._send(404, b"{}", {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    @property
    def address(self) -> str:
        """The value of AWS_LAMBDA_RUNTIME_API."""
        return f"127.0.0.1:{self.server.server_address[1]}"

    def _mark(self, what: str, who: str = "") -> None:
        self.timeline.append((what, who, time.perf_counter()))

    # ------------------------------------------------------------------ Extensions API

    def _register(self, name: str, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        with self._cond:
            if self._init_done:
                return 403, b'{"errorType":"Extension.InvalidPhase"}', {}
            if "SHUTDOWN" in body.get("events", []):  # only external extensions may
                return 400, b'{"errorType":"ShutdownEventNotSupportedForInternalExtension"}', {}
            ext_id = str(uuid.uuid4())
            self.extensions[ext_id] = name
            self.registrations.append((name, body))
            self._seen[ext_id] = 0
            self._mark("register", name)
        answer = {"functionName": self.function_name, "functionVersion": "$LATEST"}
        return 200, json.dumps(answer).encode(), {"Lambda-Extension-Identifier": ext_id}

    def _extension_next(self, ext_id: str) -> tuple[int, bytes, dict[str, str]]:
        with self._cond:
            if ext_id not in self.extensions:
                return 403, b'{"errorType":"Extension.Unknown"}', {}
            self._mark("extension_next", self.extensions[ext_id])
            self._ready.add(ext_id)
            current = self._current
            if current is not None and current.responded_at is not None:
                self._maybe_finish(current)
            self._cond.notify_all()
            while self._seen[ext_id] >= self._started and not self._closed:
                self._cond.wait(0.5)
            if self._closed:
                return 500, b"{}", {}
            self._seen[ext_id] = self._started
            invocation = self._current
            assert invocation is not None
        event = {
            "eventType": "INVOKE",
            "deadlineMs": invocation.deadline_ms,
            "requestId": invocation.request_id,
            "invokedFunctionArn": self.arn,
            "tracing": {"type": "X-Amzn-Trace-Id", "value": ""},
        }
        return 200, json.dumps(event).encode(), {"Lambda-Extension-Event-Identifier": "e"}

    # ------------------------------------------------------------------ Runtime API

    def _all_ready(self) -> bool:
        return set(self.extensions) <= self._ready

    def _runtime_next(self) -> tuple[int, bytes, dict[str, str]]:
        with self._cond:
            self._init_done = True
            self._mark("runtime_next")
            while not self._closed and not (self._queue and self._all_ready()):
                self._cond.wait(0.5)
            if self._closed:
                return 500, b"{}", {}
            invocation = self._current = self._queue.popleft()
            self._started += 1
            self._ready.clear()  # every extension now owes a `next` for this invocation
            self._mark("invoke", invocation.request_id)
            self._cond.notify_all()
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.arn,
            "Lambda-Runtime-Trace-Id": "",
            "Content-Type": "application/json",
        }
        return 200, invocation.payload, headers

    def _respond(self, request_id: str, body: bytes, *, error: bool) -> None:
        with self._cond:
            invocation = self._current
            if invocation is None or invocation.request_id != request_id:
                return
            invocation.response, invocation.error = body, error
            invocation.responded_at = time.perf_counter()
            self._mark("response", request_id)
            invocation.done.set()  # the caller has its answer now
            self._maybe_finish(invocation)

    def _maybe_finish(self, invocation: Invocation) -> None:
        if invocation.extensions_done_at is None and self._all_ready():
            invocation.extensions_done_at = time.perf_counter()

    # ------------------------------------------------------------------ client side

    def invoke(self, event: Any, timeout: float = 30.0) -> Outcome:
        request_id = str(uuid.uuid4())
        deadline_ms = int((time.time() + self.timeout_s) * 1000)
        invocation = Invocation(request_id, json.dumps(event).encode(), deadline_ms)
        with self._cond:
            self._queue.append(invocation)
            self._cond.notify_all()
        if not invocation.done.wait(timeout):
            raise TimeoutError(f"no response for {request_id}")
        assert invocation.response is not None and invocation.responded_at is not None
        return Outcome(
            json.loads(invocation.response),
            invocation.error,
            invocation.responded_at - invocation.queued,
            None,
        )

    def post_runtime(self, request_id: str | None = None, wait_s: float = 5.0) -> float | None:
        """Response -> extensions done, for the last (or given) invocation, once known."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                invocation = self._current
                if invocation is not None and invocation.extensions_done_at is not None:
                    assert invocation.responded_at is not None
                    return invocation.extensions_done_at - invocation.responded_at
                if time.monotonic() >= deadline:
                    return None
                self._cond.wait(0.05)

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


class MiniRuntime:
    """The runtime side in a thread, shaped like awslambdaric's loop: `next`, call the
    handler from `handle_one`, post the response, return (tests that need no subprocess)."""

    def __init__(self, api: FakeLambdaApi, handler: Any) -> None:
        import http.client

        self._connection = http.client.HTTPConnection(
            api.address.split(":")[0], int(api.address.split(":")[1])
        )
        self.handler = handler
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name="mini-runtime", daemon=True)

    def start(self) -> MiniRuntime:
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop:
            self._connection.request("GET", RUNTIME_NEXT)
            response = self._connection.getresponse()
            body = response.read()
            if response.status != 200:
                return
            self.handle_one(response.getheader("Lambda-Runtime-Aws-Request-Id") or "", body)

    def handle_one(self, request_id: str, body: bytes) -> None:
        context = _Context(request_id)
        try:
            result, kind = json.dumps(self.handler(json.loads(body), context)), "response"
        except Exception as exc:
            result, kind = json.dumps({"errorMessage": str(exc)}), "error"
        self._connection.request(
            "POST", f"/2018-06-01/runtime/invocation/{request_id}/{kind}", body=result.encode()
        )
        self._connection.getresponse().read()

    def stop(self) -> None:
        self._stop = True


@dataclass
class _Context:
    aws_request_id: str
    function_name: str = "fn"
