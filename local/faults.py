"""Function fault injection for the local stack: the local twin of AWS FIS's Lambda actions.

One process-global table, written through `POST/GET/DELETE /_local/faults` on the API port
and read by both runtimes (invocation faults) and the AWS emulator's middleware (AWS-call
faults). A fault:

    {"function": "<LogicalId>", "action": "crash_before" | "crash_after" | "delay",
     "step": "<optional>", "delay_ms": n, "count": n, "match": "<optional>", "skip": n}

* `step` absent: every invocation of the function; a state name (no dot): invocations whose
  event has that `"step"` key; `"<Service>.<Operation>"` (e.g. `DynamoDB.TransactWriteItems`,
  `States.StartSyncExecution`): the AWS calls the function's environments make through the
  emulator. `<Service>` is compared, case-insensitively, with the request's SigV4 signing
  name (dynamodb, states, lambda, ...) or its X-Amz-Target prefix.
* `crash_before` kills the environment before the handler runs (before the AWS call is
  performed); `crash_after` lets the handler (or the AWS call) run, then kills the environment
  before the result reaches anyone; `delay` waits `delay_ms` first (it counts toward the
  function's timeout).
* `match`: the fault applies only when this substring occurs in the invocation's payload JSON
  (for AWS-call faults: the calling invocation's payload or the API request body).
* `skip`: the first `skip` matching invocations/calls pass; the next `count` (default 1) fire.

Exhausted faults stay listed (`remaining: 0`, `fired`) until cleared, so a test can check
that its fault fired.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Action = Literal["crash_before", "crash_after", "delay"]
ACTIONS: tuple[Action, ...] = ("crash_before", "crash_after", "delay")
_MAX_DELAY_MS = 15 * 60 * 1000  # Lambda's longest timeout
_MAX_FAULTS = 1000  # a runaway script cannot grow the table without bound


class FaultError(ValueError):
    """An invalid fault specification (the API answers 400 with this message)."""


@dataclass
class Fault:
    id: str
    function: str
    action: Action
    step: str | None = None
    delay_ms: int = 0
    count: int = 1
    match: str | None = None
    skip: int = 0
    seen: int = 0  # matching invocations/calls so far (skipped ones included)
    fired: int = 0

    @property
    def aws_call(self) -> bool:
        return self.step is not None and "." in self.step

    @property
    def remaining(self) -> int:
        return self.count - self.fired

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "function": self.function,
            "action": self.action,
            "step": self.step,
            "delay_ms": self.delay_ms,
            "count": self.count,
            "match": self.match,
            "skip": self.skip,
            "seen": self.seen,
            "fired": self.fired,
            "remaining": self.remaining,
        }


def _int_field(spec: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultError(f"{name} must be an integer from {low} to {high}")
    return value


def _str_field(spec: Mapping[str, Any], name: str) -> str | None:
    value = spec.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise FaultError(f"{name} must be a non-empty string of at most 256 characters")
    return value


def parse_fault(spec: Any, fault_id: str) -> Fault:
    """Validate one fault specification (a JSON object)."""
    if not isinstance(spec, Mapping):
        raise FaultError("a fault is a JSON object")
    unknown = set(spec) - {"function", "action", "step", "delay_ms", "count", "match", "skip"}
    if unknown:
        raise FaultError(f"unknown field(s): {', '.join(sorted(unknown))}")
    function = _str_field(spec, "function")
    if function is None:
        raise FaultError("function is required (a function's logical id)")
    action = spec.get("action")
    if action not in ACTIONS:
        raise FaultError(f"action must be one of {', '.join(ACTIONS)}")
    delay_ms = _int_field(spec, "delay_ms", 0, 0, _MAX_DELAY_MS)
    if action == "delay" and delay_ms == 0:
        raise FaultError("delay needs delay_ms > 0")
    step = _str_field(spec, "step")
    if step is not None and "." in step:
        service, _, operation = step.partition(".")
        if not service or not operation:
            raise FaultError("an AWS-call step is <Service>.<Operation>")
    return Fault(
        id=fault_id,
        function=function,
        action=action,
        step=step,
        delay_ms=delay_ms,
        count=_int_field(spec, "count", 1, 1, 1_000_000),
        match=_str_field(spec, "match"),
        skip=_int_field(spec, "skip", 0, 0, 1_000_000),
    )


@dataclass(frozen=True)
class AwsCall:
    """What the middleware knows about one AWS API request."""

    service: str  # SigV4 signing name, lower case: dynamodb, states, lambda
    target_prefix: str  # X-Amz-Target before the dot (DynamoDB_20120810, AWSStepFunctions)
    operation: str  # TransactWriteItems, StartSyncExecution, Invoke

    def matches(self, step: str) -> bool:
        service, _, operation = step.partition(".")
        names = {self.service.lower(), self.target_prefix.lower().split("_", 1)[0]}
        return service.lower() in names and operation.lower() == self.operation.lower()


@dataclass
class FaultTable:
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, spec: Any) -> Fault:
        with self._lock:
            if len(self._faults) >= _MAX_FAULTS:
                raise FaultError(f"at most {_MAX_FAULTS} faults: DELETE /_local/faults first")
            fault = parse_fault(spec, f"flt_{next(self._ids)}")
            self._faults.append(fault)
            return fault

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_json() for f in self._faults]

    def clear(self) -> int:
        with self._lock:
            removed = len(self._faults)
            self._faults.clear()
            return removed

    def __bool__(self) -> bool:
        return bool(self._faults)  # racy read on purpose: the cheap "any faults?" test

    def for_invocation(self, function: str, event: Any, payload_json: str) -> Fault | None:
        """The fault that fires for this invocation, if any (counted as fired)."""
        step = event.get("step") if isinstance(event, dict) else None
        with self._lock:
            for fault in self._faults:
                if fault.function != function or fault.aws_call or fault.remaining <= 0:
                    continue
                if fault.step is not None and fault.step != step:
                    continue
                if self._take(fault, (payload_json,)):
                    return fault
        return None

    def for_aws_call(self, function: str, call: AwsCall, texts: tuple[str, ...]) -> Fault | None:
        """The fault that fires for an AWS call made by one of `function`'s environments."""
        with self._lock:
            for fault in self._faults:
                if fault.function != function or not fault.aws_call or fault.remaining <= 0:
                    continue
                if fault.step is not None and call.matches(fault.step) and self._take(fault, texts):
                    return fault
        return None

    @staticmethod
    def _take(fault: Fault, texts: tuple[str, ...]) -> bool:
        if fault.match is not None and not any(fault.match in t for t in texts):
            return False
        fault.seen += 1
        if fault.seen <= fault.skip:
            return False
        fault.fired += 1
        return True


class Caller(Protocol):
    """An execution environment, as the AWS middleware sees it when it makes a call."""

    @property
    def function(self) -> str: ...

    def current_payload(self) -> str:
        """The JSON payload of the invocation it is running ("" between invocations)."""
        ...

    def crash(self) -> None:
        """SIGKILL its runtime process now (returns once the process is gone)."""
        ...


@dataclass
class CallerRegistry:
    """Execution environments by the AWS access key id they sign their requests with."""

    _callers: dict[str, Caller] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, access_key_id: str, caller: Caller) -> None:
        with self._lock:
            self._callers[access_key_id] = caller

    def unregister(self, access_key_id: str) -> None:
        with self._lock:
            self._callers.pop(access_key_id, None)

    def get(self, access_key_id: str) -> Caller | None:
        with self._lock:
            return self._callers.get(access_key_id)


FAULTS = FaultTable()
CALLERS = CallerRegistry()


KILLED = "Runtime exited with error: signal: killed"


def exit_error(request_id: str, description: str = KILLED) -> dict[str, Any]:
    """Lambda's error for an invocation whose runtime process died (`description`: how)."""
    return {
        "errorType": "Runtime.ExitError",
        "errorMessage": f"RequestId: {request_id} Error: {description}",
    }
