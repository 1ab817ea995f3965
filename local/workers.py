"""Process-isolated Lambda runtime: every execution environment is its own process.

What `make run` uses. As on Lambda, each function has its own module state (layer included:
metrics registry, circuit breakers, the OpenTelemetry provider and its `service.name`), its
own environment (template variables plus AWS_LAMBDA_FUNCTION_NAME & co.), one invocation at
a time per environment (concurrent invocations cold-start more environments), and its
timeout enforced (the environment is killed, as Lambda does). The in-process `LambdaRuntime`
stays for the tests, which need coverage and monkeypatching inside the handlers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from local.runtime import LambdaContext, UnknownFunctionError, error_payload
from local.template import Function, Template

_REPO = Path(__file__).resolve().parents[1]


def _serve(conn: Connection) -> None:
    """The execution environment: load the handler once, then run invocations in order."""
    fn, env, layer_dirs = conn.recv()
    os.environ.update(env)
    for layer_dir in reversed(layer_dirs):
        sys.path.insert(0, layer_dir)
    module_name, _, attr = fn.handler.rpartition(".")
    path = fn.code_dir / (module_name.replace(".", "/") + ".py")
    try:
        spec = importlib.util.spec_from_file_location(f"lambda_fn_{fn.code_dir.name}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load handler {fn.handler} from {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handler = getattr(module, attr)
    except Exception as exc:
        conn.send(("error", error_payload(exc, "Runtime.ImportModuleError")))
        return
    conn.send(("ready", None))
    while True:
        try:
            event = conn.recv()
        except EOFError:
            return
        if event is None:
            return
        context = LambdaContext(fn.logical_id, fn.arn, fn.memory, fn.timeout)
        try:
            result = handler(json.loads(event), context)
        except Exception as exc:
            conn.send(("error", error_payload(exc)))
            continue
        try:
            conn.send(("ok", json.dumps(result)))
        except (TypeError, ValueError) as exc:  # not JSON-serialisable: Lambda's MarshalError
            conn.send(("error", error_payload(exc, "Runtime.MarshalError")))


class _Environment:
    def __init__(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.process, self.conn = process, conn

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


class ProcessRuntime:
    """Same interface as `LambdaRuntime`: `function()`, `invoke()`, `env`, `template`."""

    def __init__(
        self,
        template: Template,
        env_overrides: Mapping[str, str] | None = None,
        *,
        prewarm: bool = True,
    ) -> None:
        self.template = template
        self.env: dict[str, str] = dict(env_overrides or {})
        self._layer_dirs = [str(d) for d in template.layer_dirs]
        self._idle: dict[str, list[_Environment]] = {}
        self._busy: set[_Environment] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.cold_starts: dict[str, int] = {}
        if prewarm:  # in the background: the API answers before every function is warm
            for fn in template.functions.values():
                threading.Thread(target=self._prewarm, args=(fn,), daemon=True).start()

    def function(self, name_or_arn: str) -> Function:
        fn = self.template.find_function(name_or_arn)
        if fn is None:
            raise UnknownFunctionError(name_or_arn)
        return fn

    def function_env(self, fn: Function) -> dict[str, str]:
        return {
            **fn.environment,
            **self.env,
            "AWS_LAMBDA_FUNCTION_NAME": fn.logical_id,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        }

    def _start(self, fn: Function) -> _Environment | dict[str, Any]:
        """A new environment, or the Lambda error payload if its init failed."""
        # A fresh interpreter that imports only the function (a real cold start), talking
        # over a socketpair; its stdout/stderr are the function's logs, as on Lambda.
        mine, theirs = socket.socketpair()
        path = os.pathsep.join([str(_REPO), *self._layer_dirs, os.environ.get("PYTHONPATH", "")])
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "local.workers", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env={**os.environ, "PYTHONPATH": path},
            cwd=self.template.path.parent,
        )
        theirs.close()
        parent = Connection(mine.detach())
        parent.send((fn, self.function_env(fn), self._layer_dirs))
        environment = _Environment(process, parent)
        if not parent.poll(fn.timeout + 30):
            environment.kill()
            return {"errorType": "Runtime.InitTimeout", "errorMessage": "init timed out"}
        try:
            kind, payload = parent.recv()
        except EOFError:
            kind, payload = "error", {"errorType": "Runtime.ExitError", "errorMessage": "exited"}
        if kind != "ready":
            environment.kill()
            return dict(payload)
        with self._lock:
            self.cold_starts[fn.logical_id] = self.cold_starts.get(fn.logical_id, 0) + 1
        return environment

    def _prewarm(self, fn: Function) -> None:
        started = self._start(fn)
        if isinstance(started, _Environment):
            self._release(fn, started)

    def _acquire(self, fn: Function) -> _Environment | dict[str, Any]:
        with self._lock:
            pool = self._idle.setdefault(fn.logical_id, [])
            if pool:
                environment = pool.pop()
                self._busy.add(environment)
                return environment
        started = self._start(fn)  # cold start outside the lock
        if isinstance(started, _Environment):
            with self._lock:
                self._busy.add(started)
        return started

    def _release(self, fn: Function, environment: _Environment) -> None:
        with self._lock:
            self._busy.discard(environment)
            if self._closed:
                environment.kill()
                return
            self._idle.setdefault(fn.logical_id, []).append(environment)

    def invoke(self, name_or_arn: str, payload: Any) -> tuple[Any, dict[str, Any] | None]:
        """Run one invocation: (result, None) or (None, Lambda error payload)."""
        fn = self.function(name_or_arn)
        acquired = self._acquire(fn)
        if not isinstance(acquired, _Environment):
            return None, acquired
        try:
            acquired.conn.send(json.dumps(payload))
            if not acquired.conn.poll(fn.timeout):
                with self._lock:
                    self._busy.discard(acquired)
                acquired.kill()  # Lambda ends the environment of a timed-out invocation
                message = f"Task timed out after {fn.timeout:.2f} seconds"
                return None, {"errorType": "Sandbox.Timedout", "errorMessage": message}
            kind, body = acquired.conn.recv()
        except (EOFError, OSError):
            with self._lock:
                self._busy.discard(acquired)
            acquired.kill()
            return None, {"errorType": "Runtime.ExitError", "errorMessage": "environment exited"}
        self._release(fn, acquired)
        if kind == "ok":
            return json.loads(body), None
        return None, dict(body)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            environments = [e for pool in self._idle.values() for e in pool] + list(self._busy)
            self._idle.clear()
        for environment in environments:
            with contextlib.suppress(Exception):
                environment.conn.send(None)
            environment.kill()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
