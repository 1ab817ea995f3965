"""In-process Lambda runtime: runs the template's handlers without Docker.

Each function gets its own module object (loaded from functions/<dir>/app.py under a
unique name). Like Lambda, one execution environment serves one invocation at a time:
concurrent invocations of the same function each take an idle environment or cold-start
a new one (a fresh module object), so module-level state behaves as in AWS.

Limitation: os.environ is process-global, so the union of every function's environment is
applied once at start (shared names agree in our template); per-function variables such
as AWS_LAMBDA_FUNCTION_NAME are not set. Timeouts are reported through the context but
not enforced (a Python thread cannot be killed). Layer modules (payments.*) are shared by
all environments of the process.

Invocation faults of `local.faults` apply here too (crash_before: an ExitError without
running; crash_after: the handler runs, its result is dropped and its module object is not
reused; delay); AWS-call faults need the process runtime, whose environments the AWS
middleware can tell apart.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from local.faults import FAULTS, exit_error
from local.template import Function, Template

Handler = Callable[[Any, Any], Any]
_counter = itertools.count(1)

# A new runtime is a new deployment, but layer modules are shared by the whole process:
# drop what they cached from an earlier runtime (boto3 clients bound to an old endpoint,
# Stripe clients bound to an old simulator URL). Called only if already imported.
LAYER_RESET_HOOKS = (("payments.services", "reset"), ("payments.channel", "reset_channels"))


def reset_layer_caches() -> None:
    for module_name, attr in LAYER_RESET_HOOKS:
        module = sys.modules.get(module_name)
        hook = getattr(module, attr, None)
        if callable(hook):
            hook()


@dataclass
class LambdaContext:
    """The attributes of the Python runtime's context object that handlers use."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_s: int
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = ""
    _deadline: float = 0.0

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d") + "/[$LATEST]" + uuid.uuid4().hex

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class UnknownFunctionError(KeyError):
    """No function of that name/ARN in the template (Lambda: ResourceNotFoundException)."""


class TooManyRequestsError(RuntimeError):
    """Every environment the function may have is busy, for longer than the queue allows
    (Lambda: TooManyRequestsException, reason ReservedFunctionConcurrentInvocationLimitExceeded)."""


def error_payload(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    """The payload Lambda returns for an unhandled exception."""
    frames = traceback.extract_tb(exc.__traceback__)
    return {
        "errorType": error_type or type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_list(frames),
    }


class LambdaRuntime:
    def __init__(self, template: Template, env_overrides: Mapping[str, str] | None = None) -> None:
        self.template = template
        for layer_dir in template.layer_dirs:
            if str(layer_dir) not in sys.path:
                sys.path.insert(0, str(layer_dir))
        self.env: dict[str, str] = {}
        for fn in template.functions.values():
            self.env.update(fn.environment)
        self.env.update(env_overrides or {})
        os.environ.update(self.env)
        reset_layer_caches()
        self._idle: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()
        self.cold_starts: dict[str, int] = {}

    def function(self, name_or_arn: str) -> Function:
        fn = self.template.find_function(name_or_arn)
        if fn is None:
            raise UnknownFunctionError(name_or_arn)
        return fn

    def _load(self, fn: Function) -> Handler:
        module_name, _, attr = fn.handler.rpartition(".")
        path = fn.code_dir / (module_name.replace(".", "/") + ".py")
        unique = f"lambda_fn_{fn.code_dir.name}_{next(_counter)}"
        spec = importlib.util.spec_from_file_location(unique, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load handler {fn.handler} from {path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handler: Handler = getattr(module, attr)
        return handler

    def _acquire(self, fn: Function) -> Handler:
        with self._lock:
            pool = self._idle.setdefault(fn.logical_id, [])
            if pool:
                return pool.pop()
            self.cold_starts[fn.logical_id] = self.cold_starts.get(fn.logical_id, 0) + 1
        return self._load(fn)  # cold start outside the lock: imports can be slow

    def _release(self, fn: Function, handler: Handler) -> None:
        with self._lock:
            self._idle[fn.logical_id].append(handler)

    def invoke(self, name_or_arn: str, payload: Any) -> tuple[Any, dict[str, Any] | None]:
        """Run one invocation: (result, None) or (None, Lambda error payload).

        Event and result go through JSON as on Lambda, so a handler returning e.g. a
        Decimal fails here exactly as it would in AWS (Runtime.MarshalError).
        """
        fn = self.function(name_or_arn)
        data = json.dumps(payload)
        event = json.loads(data)
        ctx = LambdaContext(fn.logical_id, fn.arn, fn.memory, fn.timeout)
        fault = FAULTS.for_invocation(fn.logical_id, event, data) if FAULTS else None
        if fault is not None and fault.action == "crash_before":
            return None, exit_error(ctx.aws_request_id)  # nothing ran; no environment used
        if fault is not None and fault.action == "delay":
            time.sleep(fault.delay_ms / 1000)  # counts toward the context's remaining time
        try:
            handler = self._acquire(fn)
        except Exception as exc:
            return None, error_payload(exc, "Runtime.ImportModuleError")
        crashed = fault is not None and fault.action == "crash_after"
        try:
            result = handler(event, ctx)
        except Exception as exc:
            return None, exit_error(ctx.aws_request_id) if crashed else error_payload(exc)
        finally:
            if not crashed:  # a "killed" environment is not reused: its module state is gone
                self._release(fn, handler)
        if crashed:
            return None, exit_error(ctx.aws_request_id)  # side effects happened; answer lost
        try:
            return json.loads(json.dumps(result)), None
        except (TypeError, ValueError) as exc:
            return None, error_payload(exc, "Runtime.MarshalError")
