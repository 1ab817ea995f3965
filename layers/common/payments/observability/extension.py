"""An internal Lambda extension that exports telemetry after the response has been posted.

Protocol (Lambda Extensions API, `AWS_LAMBDA_RUNTIME_API`):

* INIT: `POST /2020-01-01/extension/register` with `Lambda-Extension-Name` and
  `{"events": ["INVOKE"]}` (internal extensions cannot subscribe to SHUTDOWN). It must
  happen before the runtime asks for its first event, so it runs while the handler module
  is imported (`instrument(...)` at decoration time); the answer carries
  `Lambda-Extension-Identifier`.
* A daemon thread long-polls `GET /2020-01-01/extension/event/next`. Lambda answers INVOKE
  when an invocation starts and does not freeze the environment, nor hand the runtime its
  next event, until every extension has asked for the next event again.
* Per INVOKE the thread waits until the handler wrapper has finished that request and the
  runtime has posted its response (the runtime's frame that called the handler has
  returned), then exports (bounded by the flush budget and the invocation deadline) and
  only then polls `event/next`: the response never waits for export, and what is exported
  before the freeze is bounded in time. That wait is Lambda's PostRuntimeExtensionsDuration;
  it is recorded as `telemetry_flush_duration_seconds{mode="extension"}`.

Adaptive flush: while traffic is sporadic (the environment idled at least one flush interval
before this invocation) every invocation is followed by a flush, so nothing sits in a frozen
environment for long; when it is busy a flush runs at most once per interval and the other
invocations poll `event/next` at once (export would otherwise hold the environment from its
next request). What is left queued at a freeze leaves with the next flush or, at shutdown,
with the SIGTERM flush (Lambda sends SIGTERM to a runtime with an internal extension and
allows it 500 ms).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

_log = logging.getLogger(__name__)

EXTENSION_NAME = "payments-telemetry"
REGISTER_PATH = "/2020-01-01/extension/register"
NEXT_PATH = "/2020-01-01/extension/event/next"
INIT_ERROR_PATH = "/2020-01-01/extension/init/error"
REGISTER_TIMEOUT_S = 2.0
# Longest wait for the runtime to post a response once the handler has returned (it is a
# loopback POST; past this the export starts anyway, still after the handler).
POSTED_GRACE_S = 0.25
_POLL_S = 0.0005
# Time kept free before the invocation deadline (the export must not time the function out).
DEADLINE_MARGIN_S = 0.05
SHUTDOWN_BUDGET_S = 0.4  # of the 500 ms Lambda grants a runtime with an internal extension


class ExtensionsApiError(RuntimeError):
    """The Extensions API refused or could not be reached."""


class ExtensionsClient:
    """The two calls an internal extension makes, over a keep-alive loopback connection."""

    def __init__(self, runtime_api: str) -> None:
        host, _, port = runtime_api.partition(":")
        self._host, self._port = host, int(port or 80)
        self.extension_id = ""

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def register(self, name: str = EXTENSION_NAME) -> dict[str, Any]:
        body = json.dumps({"events": ["INVOKE"]}).encode()
        status, headers, payload = self._request(
            "POST", REGISTER_PATH, body, {"Lambda-Extension-Name": name}, REGISTER_TIMEOUT_S
        )
        extension_id = {k.lower(): v for k, v in headers.items()}.get(
            "lambda-extension-identifier", ""
        )
        if status != 200 or not extension_id:
            raise ExtensionsApiError(f"register answered {status}")
        self.extension_id = extension_id
        answer: dict[str, Any] = json.loads(payload or b"{}")
        return answer

    def next_event(self) -> dict[str, Any]:
        """Block until Lambda has the next event for this extension (no timeout: it idles)."""
        status, _, payload = self._request(
            "GET",
            NEXT_PATH,
            None,
            {"Lambda-Extension-Identifier": self.extension_id},
            None,  # type: ignore[arg-type]
        )
        if status != 200:
            raise ExtensionsApiError(f"event/next answered {status}")
        event: dict[str, Any] = json.loads(payload)
        return event


@dataclass
class Finished:
    """What the wrapper leaves for the extension: where the runtime called the handler."""

    thread_id: int
    caller: FrameType | None


class InvocationTracker:
    """Handler wrapper -> extension thread: 'request X has returned to the runtime'."""

    def __init__(self, keep: int = 64) -> None:
        self._done: OrderedDict[str, Finished] = OrderedDict()
        self._cond = threading.Condition()
        self._keep = keep

    def finished(self, request_id: str, caller: FrameType | None) -> None:
        with self._cond:
            self._done[request_id] = Finished(threading.get_ident(), caller)
            while len(self._done) > self._keep:  # requests no extension asked about
                self._done.popitem(last=False)
            self._cond.notify_all()

    def wait(self, request_id: str, deadline: float) -> Finished | None:
        with self._cond:
            while request_id not in self._done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._done.pop(request_id)


def response_posted(finished: Finished, grace_s: float = POSTED_GRACE_S) -> bool:
    """Wait until the runtime frame that called the handler has returned (it then posted the
    response: awslambdaric's `handle_event_request` calls the handler, posts, returns)."""
    deadline = time.monotonic() + grace_s
    caller, finished.caller = finished.caller, None  # drop the frame reference when done
    if caller is None:
        return True
    while True:
        frame: FrameType | None = sys._current_frames().get(finished.thread_id)
        while frame is not None and frame is not caller:
            frame = frame.f_back
        if frame is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


class FlushPolicy:
    """After every invocation while traffic is sporadic; at most once per interval when busy."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_flush = -math.inf
        self.last_end: float | None = None

    def due(self, started: float, now: float) -> bool:
        sporadic = self.last_end is None or started - self.last_end >= self.interval_s
        return sporadic or now - self.last_flush >= self.interval_s

    def ended(self, now: float, flushed: bool) -> None:
        self.last_end = now
        if flushed:
            self.last_flush = now


Flush = Callable[[float], Any]  # budget seconds -> anything; never raises


class InternalExtension:
    """The extension thread: INVOKE -> wait for the response -> export -> event/next."""

    def __init__(
        self,
        client: ExtensionsClient,
        tracker: InvocationTracker,
        flush: Flush,
        *,
        budget_s: float,
        interval_s: float,
        on_post_runtime: Callable[[float, bool], None] | None = None,
    ) -> None:
        self.client = client
        self.tracker = tracker
        self._flush = flush
        self.budget_s = budget_s
        self.policy = FlushPolicy(interval_s)
        self._on_post_runtime = on_post_runtime
        self.alive = False
        self.invocations = 0
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.alive = True
        self._thread = threading.Thread(target=self._loop, name=EXTENSION_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Tests only: no more events are handled (the thread ends with its next poll)."""
        self._stopped = True

    def _loop(self) -> None:
        try:
            while not self._stopped:
                event = self.client.next_event()
                if self._stopped:
                    break
                if event.get("eventType") == "INVOKE":
                    self.after_invocation(event)
        except Exception as exc:  # the API went away: the wrapper falls back to inline
            if not self._stopped:
                _log.warning("telemetry extension stopped: %s", type(exc).__name__)
        finally:
            self.alive = False

    def after_invocation(self, event: dict[str, Any]) -> None:
        started = time.monotonic()
        deadline = _monotonic_deadline(event.get("deadlineMs"), started)
        finished = self.tracker.wait(str(event.get("requestId", "")), deadline)
        if finished is not None:
            response_posted(finished)
        posted = time.monotonic()
        self.invocations += 1
        due = self.policy.due(started, posted)
        if due:
            budget = min(self.budget_s, max(0.0, deadline - posted - DEADLINE_MARGIN_S))
            with contextlib.suppress(Exception):  # export never fails an invocation
                self._flush(budget)
        now = time.monotonic()
        self.policy.ended(now, due)
        if self._on_post_runtime is not None:
            with contextlib.suppress(Exception):
                self._on_post_runtime(now - posted, due)


def _monotonic_deadline(deadline_ms: Any, now: float) -> float:
    """The invocation's deadline (epoch ms in the INVOKE event) on the monotonic clock."""
    try:
        remaining = float(deadline_ms) / 1000 - time.time()
    except (TypeError, ValueError):
        remaining = 900.0  # Lambda's longest timeout
    return now + max(0.0, remaining)


def install_sigterm_flush(flush: Flush) -> bool:
    """On SIGTERM (environment shutdown) flush within Lambda's grace, then terminate.

    Only in Lambda's managed runtime (AWS_EXECUTION_ENV): it polls for events off the main
    thread, so a Python signal handler can run. A runtime blocked in a C call on the main
    thread (awslambdaric's default, e.g. a local emulation) would never run the handler and,
    with the default action replaced, would no longer stop on SIGTERM at all.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if not os.environ.get("AWS_EXECUTION_ENV", "").startswith("AWS_Lambda_"):
        return False
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(Exception):
            flush(SHUTDOWN_BUDGET_S)
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
