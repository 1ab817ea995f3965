"""Lambda's Runtime API (2018-06-01) and Extensions API (2020-01-01) for one environment.

Each execution environment of the process runtime gets its own listener on 127.0.0.1 (its
`AWS_LAMBDA_RUNTIME_API`), as each Lambda sandbox has its own endpoint. `Sandbox` holds the
environment's side of both protocols and Lambda's phase rules:

* INIT: extensions register (`/extension/register`) until the runtime's first
  `/runtime/invocation/next`; INIT is over once the runtime and every registered extension
  wait in their `next` call (or the runtime posts `/runtime/init/error`, or an extension
  posts `/extension/init/error`).
* INVOKE: the event goes to the runtime's pending `next` and, as an INVOKE event, to every
  extension registered for INVOKE. The runtime's `/response` (or `/error`) is handed to the
  caller at once; the invocation is *complete* only when the runtime and every extension
  have called `next` again (the post-runtime phase). Only then may the next invocation start.
* SHUTDOWN: only external extensions (processes started from a layer's `extensions/`
  directory, registered under their file name) may register for it; internal extensions
  (threads of the runtime process) are refused, as Lambda refuses them.

Error bodies and codes follow the Runtime Interface Emulator (`errorType`/`errorMessage`,
403 for protocol violations, 400 for an unknown request id, 413 for an oversized response).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from local.faults import KILLED, exit_error

MAX_RESPONSE = 6 * 1024 * 1024 + 100  # 6291556 bytes: Lambda's synchronous response limit
MAX_EXTENSIONS = 10
_RUNTIME = "/2018-06-01/runtime"
_EXTENSION = "/2020-01-01/extension"
_INVOCATION = re.compile(rf"^{_RUNTIME}/invocation/([^/]+)/(response|error)$")

Reply = tuple[int, dict[str, str], bytes]
Outcome = Literal["done", "timeout", "undelivered"]


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


def _error(status: int, error_type: str, message: str) -> Reply:
    return _json(status, {"errorType": error_type, "errorMessage": message})


_ACCEPTED = _json(202, {"status": "OK"})


def xray_trace_header() -> str:
    """A fresh X-Ray trace header; locally every request counts as sampled."""
    root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    return f"Root={root};Parent={uuid.uuid4().hex[:16]};Sampled=1"


@dataclass
class Invocation:
    request_id: str
    function_arn: str
    payload: bytes
    timeout_s: float
    trace_id: str = field(default_factory=xray_trace_header)
    client_context: str | None = None
    crash_after: bool = False  # fault: kill the runtime instead of delivering its answer
    started: float = field(default_factory=time.monotonic)
    taken: bool = False  # the runtime received the event
    result: bytes | None = None
    error: dict[str, Any] | None = None
    responded: float | None = None  # when the runtime answered (monotonic)

    @property
    def deadline(self) -> float:
        return self.started + self.timeout_s

    @property
    def deadline_ms(self) -> int:
        return int((time.time() + self.deadline - time.monotonic()) * 1000)

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": self.request_id,
            "Lambda-Runtime-Deadline-Ms": str(self.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
            "Lambda-Runtime-Trace-Id": self.trace_id,
        }
        if self.client_context:
            headers["Lambda-Runtime-Client-Context"] = self.client_context
        return headers


@dataclass
class Extension:
    id: str
    name: str
    events: frozenset[str]
    internal: bool
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    waiting: bool = False
    failed: str | None = None  # error type it reported (init/exit error): out of the game

    def ready(self) -> bool:
        return self.failed is not None or (self.waiting and not self.queue)


@dataclass(frozen=True)
class FunctionInfo:
    """What `/extension/register` answers."""

    name: str
    version: str
    handler: str
    account_id: str


class Sandbox:
    """One execution environment's state for both APIs (thread-safe; HTTP threads block here)."""

    def __init__(
        self,
        info: FunctionInfo,
        external_names: frozenset[str] = frozenset(),
        on_complete: Callable[[Invocation, float], None] | None = None,
    ) -> None:
        self.info = info
        self.external_names = external_names
        self.on_complete = on_complete  # (invocation, post-runtime seconds), outside the lock
        self.crash: Callable[[], None] = lambda: None  # kills the runtime process (set by owner)
        self._cond = threading.Condition()
        self.registration_open = True
        self.runtime_waiting = False
        self.pending: Invocation | None = None  # handed over, not yet taken by the runtime
        self.current: Invocation | None = None  # taken, not yet answered
        self.finishing: Invocation | None = None  # answered; post-runtime phase running
        self._runtime_next_at: float | None = None
        self.extensions: dict[str, Extension] = {}
        self.init_done = False
        self.init_error: dict[str, Any] | None = None
        self.dead: str | None = None  # how the runtime process ended, once it has
        self.broken: str | None = None  # why it must not serve another invocation

    # --- helpers (caller holds the lock) --------------------------------------------------

    def _quiescent(self) -> bool:
        return (
            self.runtime_waiting
            and self.pending is None
            and self.current is None
            and all(e.ready() for e in self.extensions.values())
        )

    def _progress(self) -> list[tuple[Invocation, float]]:
        """Phase transitions after a `next` call; returns completed invocations to report."""
        done: list[tuple[Invocation, float]] = []
        if self._quiescent():
            if not self.init_done and self.init_error is None:
                self.init_done = True
            if self.finishing is not None:
                now = time.monotonic()
                post = now - (self._runtime_next_at or now)
                done.append((self.finishing, post))
                self.finishing = None
        self._cond.notify_all()
        return done

    def _report(self, done: list[tuple[Invocation, float]]) -> None:
        if self.on_complete is not None:
            for invocation, post in done:
                self.on_complete(invocation, post)

    # --- Runtime API -----------------------------------------------------------------------

    def runtime_next(self) -> Reply:
        with self._cond:
            if self.current is not None:
                return _error(
                    403,
                    "InvalidStateTransition",
                    "State transition from Running to Ready failed for runtime. "
                    f"Error: invocation {self.current.request_id} has no response",
                )
            self.registration_open = False
            self.runtime_waiting = True
            if self.finishing is not None:
                self._runtime_next_at = time.monotonic()
            done = self._progress()
        self._report(done)
        with self._cond:
            while self.pending is None and self.dead is None:
                self._cond.wait()
            invocation = self.pending
            if invocation is None:  # the process is gone; nobody reads this answer
                return _error(500, "InternalServerError", "Internal Server Error")
            self.pending, self.current = None, invocation
            self.runtime_waiting, invocation.taken = False, True
            self._cond.notify_all()
        return 200, invocation.headers(), invocation.payload

    def _answer(self, request_id: str, result: bytes | None, error: dict[str, Any] | None) -> Reply:
        with self._cond:
            invocation = self.current
            if invocation is None or invocation.request_id != request_id:
                return _error(400, "InvalidRequestID", "Invalid request ID")
            crash = invocation.crash_after
            if not crash:
                invocation.result, invocation.error = result, error
                invocation.responded = time.monotonic()
                self.current, self.finishing, self._runtime_next_at = None, invocation, None
                self._cond.notify_all()
        if crash:
            self.crash()  # the answer never leaves the environment: the process is killed
        return _ACCEPTED

    def runtime_response(self, request_id: str, body: bytes) -> Reply:
        return self._answer(request_id, body, None)

    def runtime_error(self, request_id: str, error_type: str, body: bytes) -> Reply:
        return self._answer(request_id, None, _error_body(error_type, body))

    def response_too_large(self, request_id: str) -> Reply:
        size_error = {
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": "Response payload size exceeded maximum allowed payload size "
            f"({MAX_RESPONSE} bytes).",
        }
        reply = self._answer(request_id, None, size_error)
        if reply[0] != 202:
            return reply
        return _error(
            413,
            "RequestEntityTooLarge",
            f"Exceeded maximum allowed payload size ({MAX_RESPONSE} bytes).",
        )

    def runtime_init_error(self, error_type: str, body: bytes) -> Reply:
        with self._cond:
            if self.init_done:
                return _error(
                    403, "InvalidStateTransition", "State transition from Ready to InitError failed"
                )
            self.init_error = _error_body(error_type, body)
            self._cond.notify_all()
        return _ACCEPTED

    # --- Extensions API --------------------------------------------------------------------

    def register(self, name: str, body: bytes, accept_feature: str) -> Reply:
        if not name:
            return _error(403, "Extension.InvalidExtensionName", "Empty extension name")
        try:
            request = json.loads(body or b"{}")
            events = [str(e) for e in request.get("events") or []]
        except (ValueError, AttributeError, TypeError) as exc:
            return _error(403, "InvalidRequestFormat", str(exc))
        internal = name not in self.external_names
        for event in events:
            if event not in ("INVOKE", "SHUTDOWN"):
                return _error(403, "Extension.InvalidEventType", f"{event}: unknown event")
            if event == "SHUTDOWN" and internal:
                return _error(
                    403,
                    "Extension.InvalidEventType",
                    "SHUTDOWN: internal extensions cannot register for SHUTDOWN",
                )
        with self._cond:
            if not self.registration_open:
                return _error(
                    403, "Extension.RegistrationClosed", "Extension registration closed already"
                )
            if any(e.name == name for e in self.extensions.values()):
                return _error(
                    403,
                    "Extension.InvalidExtensionState",
                    "Extension with this name already registered",
                )
            if len(self.extensions) >= MAX_EXTENSIONS:
                return _error(
                    403,
                    "Extension.TooManyExtensions",
                    f"Extension limit ({MAX_EXTENSIONS}) reached",
                )
            extension = Extension(str(uuid.uuid4()), name, frozenset(events), internal)
            self.extensions[extension.id] = extension
            self._cond.notify_all()
        answer = {
            "functionName": self.info.name,
            "functionVersion": self.info.version,
            "handler": self.info.handler,
        }
        if "accountId" in accept_feature:
            answer["accountId"] = self.info.account_id
        return _json(200, answer, {"Lambda-Extension-Identifier": extension.id})

    def _extension(self, extension_id: str) -> Extension | Reply:
        if not extension_id:
            return _error(
                403, "Extension.MissingExtensionIdentifier", "Missing Lambda-Extension-Identifier"
            )
        extension = self.extensions.get(extension_id)
        if extension is None:
            return _error(
                403, "Extension.UnknownExtensionIdentifier", f"Unknown extension {extension_id}"
            )
        if extension.failed is not None:
            return _error(
                403,
                "Extension.InvalidExtensionState",
                f"Extension {extension.name} reported {extension.failed}",
            )
        return extension

    def extension_next(self, extension_id: str) -> Reply:
        with self._cond:
            extension = self._extension(extension_id)
            if not isinstance(extension, Extension):
                return extension
            extension.waiting = True
            done = self._progress()
        self._report(done)
        with self._cond:
            while not extension.queue and extension.failed is None:
                self._cond.wait()
            if not extension.queue:
                return _error(403, "Extension.InvalidExtensionState", "Extension failed")
            event = extension.queue.popleft()
            extension.waiting = False
            self._cond.notify_all()
        headers = {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())}
        return _json(200, event, headers)

    def extension_error(self, extension_id: str, error_type: str, body: bytes, init: bool) -> Reply:
        with self._cond:
            extension = self._extension(extension_id)
            if not isinstance(extension, Extension):
                return extension
            extension.failed = error_type or "Extension.Unknown"
            detail = _error_body(extension.failed, body).get("errorMessage") or ""
            message = f"Extension {extension.name} reported {extension.failed}. {detail}".strip()
            if init and not self.init_done:
                self.init_error = {"errorType": extension.failed, "errorMessage": message}
            else:
                self.broken = message  # Lambda resets the environment after such an error
            done = self._progress()
        self._report(done)
        return _ACCEPTED

    # --- the owner's side (the process runtime) ----------------------------------------------

    def wait_init(self, timeout: float) -> Literal["ready", "error", "dead", "timeout"]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.init_error is not None:
                    return "error"
                if self.init_done:
                    return "ready"
                if self.dead is not None:
                    return "dead"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                self._cond.wait(remaining)

    def wait_registered(self, names: frozenset[str], timeout: float) -> bool:
        """External extensions have registered (Lambda starts the runtime only then)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not names <= {e.name for e in self.extensions.values()}:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.dead is not None:
                    return False
                self._cond.wait(remaining)
            return True

    def idle(self) -> bool:
        """Ready for an invocation: INIT and any post-runtime phase are over."""
        with self._cond:
            return self.init_done and self.dead is None and self._quiescent()

    def dispatch(self, invocation: Invocation) -> bool:
        """Hand an invocation to the runtime and the INVOKE extensions; False if not idle."""
        with self._cond:
            if not (self.init_done and self.dead is None and self._quiescent()):
                return False
            self.pending = invocation
            event = {
                "eventType": "INVOKE",
                "deadlineMs": invocation.deadline_ms,
                "requestId": invocation.request_id,
                "invokedFunctionArn": invocation.function_arn,
                "tracing": {"type": "X-Amzn-Trace-Id", "value": invocation.trace_id},
            }
            for extension in self.extensions.values():
                if "INVOKE" in extension.events and extension.failed is None:
                    extension.queue.append(dict(event))
            self._cond.notify_all()
            return True

    def wait_answer(self, invocation: Invocation) -> Outcome:
        """Until the runtime answers, the process dies, or the invocation's deadline."""
        with self._cond:
            while not invocation.finished and self.dead is None:
                remaining = invocation.deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                self._cond.wait(remaining)
            if invocation.finished:
                return "done"
            if self.pending is invocation:  # died before the runtime took it: safe to retry
                self.pending = None
                return "undelivered"
            return "done"  # mark_dead gave it Runtime.ExitError

    def post_runtime_overdue(self, now: float) -> Invocation | None:
        """The invocation whose post-runtime phase outlived its deadline, if any."""
        with self._cond:
            overdue = self.finishing
            return overdue if overdue is not None and now > overdue.deadline else None

    def mark_dead(self, description: str) -> None:
        """The runtime process has exited: fail what it was running, wake every waiter."""
        with self._cond:
            self.dead = description
            for invocation in (self.current, self.finishing):
                if invocation is not None and not invocation.finished:
                    invocation.error = exit_error(invocation.request_id, description)
            self.current = None
            self._cond.notify_all()

    def shutdown(self, reason: str, deadline_ms: int) -> list[Extension]:
        """Queue SHUTDOWN for the extensions that registered it; returns them."""
        with self._cond:
            self.registration_open = False
            targets = [e for e in self.extensions.values() if "SHUTDOWN" in e.events]
            for extension in targets:
                extension.queue.append(
                    {"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": deadline_ms}
                )
            self._cond.notify_all()
            return targets

    def wait_extensions(self, extensions: list[Extension], deadline: float) -> bool:
        """Until each of `extensions` is waiting in `next` again (its SHUTDOWN work is done)."""
        with self._cond:
            while not all(e.ready() for e in extensions):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def release_waiters(self) -> None:
        """Environment torn down: end every blocked `next` call."""
        with self._cond:
            if self.dead is None:
                self.dead = KILLED
            for extension in self.extensions.values():
                extension.failed = extension.failed or "Extension.Shutdown"
            self._cond.notify_all()


def _error_body(error_type: str, body: bytes) -> dict[str, Any]:
    """The error JSON a runtime or extension posted (any bytes: never raises)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    text = body.decode("utf-8", errors="replace")
    return {"errorType": error_type or "Runtime.Unknown", "errorMessage": text}


def route(sandbox: Sandbox, method: str, path: str, headers: Any, body: bytes | None) -> Reply:
    """One request of either API; `body` is None when it exceeded MAX_RESPONSE."""
    path = path.split("?", 1)[0]
    error_type = headers.get("Lambda-Runtime-Function-Error-Type") or ""
    if method == "GET" and path == f"{_RUNTIME}/invocation/next":
        return sandbox.runtime_next()
    if method == "POST" and (match := _INVOCATION.match(path)):
        request_id, kind = match.groups()
        if body is None:
            return sandbox.response_too_large(request_id)
        if kind == "response":
            return sandbox.runtime_response(request_id, body)
        return sandbox.runtime_error(request_id, error_type, body)
    if body is None:
        return _error(413, "RequestEntityTooLarge", "Request too large")
    if method == "POST" and path == f"{_RUNTIME}/init/error":
        return sandbox.runtime_init_error(error_type, body)
    extension_id = headers.get("Lambda-Extension-Identifier") or ""
    extension_error = headers.get("Lambda-Extension-Function-Error-Type") or ""
    if method == "POST" and path == f"{_EXTENSION}/register":
        name = headers.get("Lambda-Extension-Name") or ""
        return sandbox.register(name, body, headers.get("Lambda-Extension-Accept-Feature") or "")
    if method == "GET" and path == f"{_EXTENSION}/event/next":
        return sandbox.extension_next(extension_id)
    if method == "POST" and path in (f"{_EXTENSION}/init/error", f"{_EXTENSION}/exit/error"):
        init = path.endswith("/init/error")
        return sandbox.extension_error(extension_id, extension_error, body, init)
    return _error(404, "NotFound", f"{method} {path} is not part of the Runtime or Extensions API")


class _Binding:
    """What the request handler sees as its `server`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the runtime client reuses its connection
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Binding  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self._send(_error(411, "LengthRequired", "Content-Length required"))
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(_error(400, "InvalidRequestFormat", "bad Content-Length"))
            self.close_connection = True
            return
        body: bytes | None = None
        if length > MAX_RESPONSE:
            self.close_connection = True  # the body is not read
        else:
            body = self.rfile.read(length) if length else b""
        self._send(route(self.server.sandbox, self.command, self.path, self.headers, body))

    def _send(self, reply: Reply) -> None:
        status, headers, data = reply
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the process died while we answered
            self.close_connection = True


class Endpoint:
    """A listener on 127.0.0.1 serving one sandbox: `address` is its AWS_LAMBDA_RUNTIME_API."""

    def __init__(self, sandbox: Sandbox, name: str) -> None:
        self.sandbox = sandbox
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._binding = _Binding(sandbox)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"rapi-{name}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return  # closed
            conn.setblocking(True)
            threading.Thread(
                target=self._serve, args=(conn, peer), name=self._thread.name, daemon=True
            ).start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        with contextlib.suppress(OSError), conn:
            _Handler(conn, peer, self._binding)  # type: ignore[arg-type]

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.sandbox.release_waiters()
