"""Process-per-environment Lambda runtime (`make run`): the real runtime interface client.

Every execution environment is `python -m awslambdaric <handler>` (cwd and LAMBDA_TASK_ROOT
the function's code directory, the layers on PYTHONPATH as Lambda's /opt/python, the
template's variables plus Lambda's reserved ones) talking to its own Runtime API and
Extensions API endpoint served by this process (`local.runtime_api`). As on Lambda:

* one invocation at a time per environment; concurrent invocations take an idle environment
  or start a new one, up to a per-function cap (`LOCAL_MAX_ENVIRONMENTS`, default 4, or the
  template's ReservedConcurrentExecutions if lower); beyond it invocations queue for at most
  `LOCAL_QUEUE_TIMEOUT_SECONDS` (default 20), then fail with TooManyRequestsException
  (Lambda would scale out instead: locally a burst waits, as long as API Gateway's 29 s
  integration timeout leaves time to run it; twenty concurrent refunds on a fresh stack on
  a loaded 2-core machine queued longer than 10 s);
* at most `LOCAL_MAX_COLD_STARTS` environments initialise at once (default: CPU count):
  twenty interpreters importing boto3 at once on two cores take longer than a request may;
* an environment whose process died (while idle or busy) is dropped at once and never handed
  an invocation; an invocation whose event never reached the runtime moves to another one;
* a timed-out invocation (`Sandbox.Timedout`) or a crash (`Runtime.ExitError`) resets the
  environment; executables in a layer's `extensions/` directory run as external extensions
  and get SHUTDOWN (spindown, timeout, failure) with Lambda's 2 s budget;
* an environment idle for `LOCAL_IDLE_TIMEOUT_SECONDS` (default 600; 0: never) is shut down;
* a `REPORT` line per invocation on stderr (`LOCAL_REPORT_LINES=0` silences them).

Fault injection (`local.faults`) happens here for invocations, and in the AWS middleware for
AWS calls, which finds the calling environment by the access key id it signs with (each
environment gets its own, as each Lambda sandbox gets its own role session).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.faults import CALLERS, FAULTS, Fault, exit_error
from local.runtime import TooManyRequestsError, UnknownFunctionError
from local.runtime_api import Endpoint, FunctionInfo, Invocation, Sandbox, xray_trace_header
from local.template import ACCOUNT, Function, Template

_INIT_LIMIT_S = 10.0  # Lambda's INIT limit; it then retries INIT within the function timeout
_SHUTDOWN_S = 2.0  # Lambda's SHUTDOWN budget with external extensions
_RUNTIME_GRACE_S = 0.5  # SIGTERM → SIGKILL for a runtime with extensions registered
_POST_RUNTIME_PATIENCE_S = 0.1
_ATTEMPTS = 3  # environments tried for one invocation whose event was never delivered


@dataclass(frozen=True)
class Limits:
    max_environments: int = 4
    max_cold_starts: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    queue_timeout_s: float = 20.0
    idle_timeout_s: float = 600.0  # an environment idle this long is shut down (0: never)
    reports: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Limits:
        """Read the LOCAL_* knobs; ValueError names the bad one."""
        default = cls()
        return cls(
            max_environments=_positive(environ, "LOCAL_MAX_ENVIRONMENTS", default.max_environments),
            max_cold_starts=_positive(environ, "LOCAL_MAX_COLD_STARTS", default.max_cold_starts),
            queue_timeout_s=float(
                _positive(environ, "LOCAL_QUEUE_TIMEOUT_SECONDS", int(default.queue_timeout_s))
            ),
            idle_timeout_s=float(
                _positive(environ, "LOCAL_IDLE_TIMEOUT_SECONDS", int(default.idle_timeout_s), 0)
            ),
            reports=environ.get("LOCAL_REPORT_LINES", "1") not in ("0", "false", "no"),
        )


def _positive(environ: Mapping[str, str], name: str, default: int, low: int = 1) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < low:
        kind = "a positive integer" if low else "a whole number"
        raise ValueError(f"{name} must be {kind}, got {raw!r}")
    return int(raw)


def exit_description(returncode: int) -> str:
    """How Lambda words a runtime's end (Go's os.ProcessState strings)."""
    if returncode < 0:
        name = signal.strsignal(-returncode) or f"signal {-returncode}"
        return f"Runtime exited with error: signal: {name.lower()}"
    if returncode == 0:
        return "Runtime exited without providing a reason"
    return f"Runtime exited with error: exit status {returncode}"


def _peak_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _runtime_dir() -> str:
    spec = importlib.util.find_spec("awslambdaric")
    origin = spec.origin if spec is not None else None
    return str(Path(origin).parent) if origin else ""


class _Environment:
    """One execution environment: its endpoint, runtime process and external extensions."""

    def __init__(self, owner: ProcessRuntime, fn: Function, number: int) -> None:
        self.owner, self.fn, self.function = owner, fn, fn.logical_id
        self.name = f"{fn.logical_id}-{number}"
        self.access_key = f"ASIALOCAL{uuid.uuid4().hex[:11].upper()}"  # its "role session"
        self.externals = sorted(
            p
            for layer in owner.template.layer_dirs
            for p in (layer / "extensions").glob("*")
            if p.is_file() and os.access(p, os.X_OK)
        )
        info = FunctionInfo(fn.logical_id, "$LATEST", fn.handler, ACCOUNT)
        names = frozenset(p.name for p in self.externals)
        self.sandbox = Sandbox(info, names, on_complete=self._completed)
        self.sandbox.crash = self.crash
        self.endpoint = Endpoint(self.sandbox, self.name)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.runtime: subprocess.Popen[bytes] | None = None
        self.invocation: Invocation | None = None
        self.init_ms: float | None = None  # reported with its first invocation
        self.init_window = (0.0, 0.0)  # monotonic start and end of its INIT phase
        self.retired = False
        self.last_used = time.monotonic()  # when it last went idle
        self._peak_kb = 0
        CALLERS.register(self.access_key, self)

    # --- faults.Caller ------------------------------------------------------------------------

    def current_payload(self) -> str:
        invocation = self.invocation
        return invocation.payload.decode("utf-8", "replace") if invocation else ""

    def crash(self) -> None:
        process = self.runtime
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)

    # --- life cycle ------------------------------------------------------------------------

    def environ(self) -> dict[str, str]:
        fn = self.fn
        layers = [str(d) for d in self.owner.template.layer_dirs]
        return {
            **os.environ,
            **fn.environment,
            **self.owner.env,
            "AWS_LAMBDA_FUNCTION_NAME": fn.logical_id,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_RUNTIME_API": self.endpoint.address,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.logical_id}",
            "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_SESSION_TOKEN": f"local-session-{self.name}",
            "LAMBDA_TASK_ROOT": str(fn.code_dir),
            "LAMBDA_RUNTIME_DIR": self.owner.runtime_dir,
            "_HANDLER": fn.handler,
            "TZ": ":UTC",
            "PYTHONPATH": os.pathsep.join(
                p for p in [*layers, *os.environ.get("PYTHONPATH", "").split(os.pathsep)] if p
            ),
        }

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # Its own session and process group: a terminal's Ctrl-C reaches the stack only
        # (which then stops every environment), and killing the group ends whatever the
        # function started too.
        process = subprocess.Popen(  # noqa: S603 - our interpreter, the template's handler
            argv, env=env, cwd=self.fn.code_dir, start_new_session=True
        )
        self.processes.append(process)
        threading.Thread(
            target=self._reap, args=(process,), name=f"reap-{self.name}", daemon=True
        ).start()
        return process

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        returncode = process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # what it left behind
            os.killpg(process.pid, signal.SIGKILL)
        if process is self.runtime:
            self.sandbox.mark_dead(exit_description(returncode))
            self.owner.environment_exited(self)

    def start(self, init_timeout: float) -> dict[str, Any] | None:
        """INIT: external extensions, then the runtime; None or the init error to report."""
        began = time.monotonic()
        env = self.environ()
        for path in self.externals:
            self._spawn([str(path)], env)
        names = frozenset(p.name for p in self.externals)
        if names and not self.sandbox.wait_registered(names, init_timeout):
            return {
                "errorType": "Extension.InitError",
                "errorMessage": "extensions did not register",
            }
        self.runtime = self._spawn([sys.executable, "-m", "awslambdaric", self.fn.handler], env)
        state = self.sandbox.wait_init(init_timeout)
        self.init_window = (began, time.monotonic())
        if state == "ready":
            self.init_ms = (time.monotonic() - began) * 1000
            return None
        if state == "error" and self.sandbox.init_error is not None:
            return dict(self.sandbox.init_error)
        if state == "timeout":
            message = f"INIT phase did not complete within {init_timeout:.2f} seconds"
            return {"errorType": "Sandbox.Timedout", "errorMessage": message}
        return exit_error("", self.sandbox.dead or "Runtime exited without providing a reason")

    def alive(self) -> bool:
        process = self.runtime
        return (
            not self.retired
            and process is not None
            and process.poll() is None
            and self.sandbox.dead is None
        )

    def peak_mb(self) -> int:
        """Max Memory Used: the environment's processes' peak RSS, kept once they are gone."""
        kb = sum(_peak_kb(p.pid) for p in self.processes if p.returncode is None)
        self._peak_kb = max(self._peak_kb, kb)
        return math.ceil(self._peak_kb / 1024)

    def begin_shutdown(self, reason: str, graceful: bool) -> float:
        """Lambda's SHUTDOWN: SIGTERM (a grace period when extensions are registered) or SIGKILL
        for the runtime, SHUTDOWN events for external extensions; returns the deadline."""
        deadline = time.monotonic() + _SHUTDOWN_S
        self.sandbox.shutdown(reason, int((time.time() + _SHUTDOWN_S) * 1000))
        process = self.runtime
        if process is not None and process.returncode is None:
            if graceful and self.sandbox.extensions:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            else:
                self.crash()
        return deadline

    def finish_shutdown(self, deadline: float) -> None:
        process = self.runtime
        if process is not None:
            grace = min(deadline, time.monotonic() + _RUNTIME_GRACE_S) - time.monotonic()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, grace))
        externals = [e for e in self.sandbox.extensions.values() if not e.internal]
        if externals:
            self.sandbox.wait_extensions(externals, deadline)
        self.destroy()

    def destroy(self) -> None:
        """SIGKILL every process of the environment and close its endpoint."""
        self.retired = True
        for process in self.processes:
            if process.returncode is None:  # once reaped, its pid (and group id) may be reused
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self.endpoint.close()
        CALLERS.unregister(self.access_key)

    def _completed(self, invocation: Invocation, post_s: float) -> None:
        self.owner.invocation_completed(self, invocation, post_s)


@dataclass
class _Pool:
    fn: Function
    cap: int
    idle: list[_Environment] = field(default_factory=list)
    busy: set[_Environment] = field(default_factory=set)
    starting: int = 0

    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting


class ProcessRuntime:
    """Same interface as `LambdaRuntime`: `function()`, `invoke()`, `env`, `template`."""

    def __init__(
        self,
        template: Template,
        env_overrides: Mapping[str, str] | None = None,
        *,
        prewarm: bool = True,
        limits: Limits | None = None,
    ) -> None:
        self.template = template
        self.env: dict[str, str] = dict(env_overrides or {})
        self.limits = limits or Limits.from_env(os.environ)
        self.runtime_dir = _runtime_dir()
        self.cold_starts: dict[str, int] = {}
        self._pools = {lid: _Pool(fn, self._cap(fn)) for lid, fn in template.functions.items()}
        self._all: set[_Environment] = set()
        self._cond = threading.Condition()
        self._cold_active = 0
        self._closed = False
        self._numbers = itertools.count(1)
        threading.Thread(target=self._supervise, name="env-supervisor", daemon=True).start()
        if prewarm:  # in the background: the API answers before every function is warm
            for pool in self._pools.values():
                threading.Thread(target=self._prewarm, args=(pool,), daemon=True).start()

    def _cap(self, fn: Function) -> int:
        reserved = fn.reserved_concurrency
        return (
            self.limits.max_environments
            if reserved is None
            else min(reserved, self.limits.max_environments)
        )

    def function(self, name_or_arn: str) -> Function:
        fn = self.template.find_function(name_or_arn)
        if fn is None:
            raise UnknownFunctionError(name_or_arn)
        return fn

    def environments(self, name: str) -> list[_Environment]:
        """The function's live environments (idle and busy), for tests and diagnostics."""
        pool = self._pools[self.function(name).logical_id]
        with self._cond:
            return [*pool.idle, *pool.busy]

    # --- pool ----------------------------------------------------------------------------------

    def _grow(self, pool: _Pool, *, park: bool = False) -> _Environment | dict[str, Any]:
        """Cold-start one environment (the caller reserved a slot, released here); it goes to
        the busy set (for the caller) or, with `park`, to the idle list, in the same step."""
        env = _Environment(self, pool.fn, next(self._numbers))
        with self._cond:
            self._all.add(env)
            self.cold_starts[pool.fn.logical_id] = self.cold_starts.get(pool.fn.logical_id, 0) + 1
        try:
            error = env.start(_INIT_LIMIT_S + pool.fn.timeout)
        except OSError as exc:  # could not even spawn it: an init failure, slot released
            error = {"errorType": "Runtime.Unknown", "errorMessage": f"cannot start: {exc}"}
        with self._cond:
            pool.starting -= 1
            self._cold_active -= 1
            self._cond.notify_all()
            if error is None and self._closed:
                error = {"errorType": "ServiceException", "errorMessage": "runtime closed"}
            if error is None:  # counted in the pool before the lock is let go: the cap holds
                (pool.idle.append if park else pool.busy.add)(env)
        if error is not None:
            self._forget(env)
            env.destroy()
            return error
        return env

    def _acquire(self, pool: _Pool, queue_deadline: float) -> _Environment | dict[str, Any]:
        # An environment in its post-runtime phase is usually free within a millisecond
        # (the runtime's next `next` call): worth a short wait before a 100+ ms cold start.
        patience = time.monotonic() + _POST_RUNTIME_PATIENCE_S
        with self._cond:
            while True:
                if self._closed:
                    return {"errorType": "ServiceException", "errorMessage": "runtime closed"}
                env = self._take_idle(pool)
                if env is not None:
                    return env
                now = time.monotonic()
                if now < patience and any(_finishing(e) for e in pool.busy):
                    self._cond.wait(patience - now)
                    continue
                if pool.size() < pool.cap and self._cold_active < self.limits.max_cold_starts:
                    pool.starting += 1
                    self._cold_active += 1
                    break
                remaining = queue_deadline - time.monotonic()
                if pool.cap == 0 or remaining <= 0:
                    raise TooManyRequestsError(pool.fn.logical_id)
                self._cond.wait(remaining)
        return self._grow(pool)

    def _take_idle(self, pool: _Pool) -> _Environment | None:
        """An idle, live environment (caller holds the lock); dead ones are dropped."""
        while pool.idle:
            env = pool.idle.pop()  # the most recently used: warmest caches
            if env.alive() and env.sandbox.idle():
                pool.busy.add(env)
                return env
            env.retired = True
            self._all.discard(env)
            threading.Thread(target=env.destroy, daemon=True).start()  # not under the lock
        return None

    def _prewarm(self, pool: _Pool) -> None:
        with self._cond:
            while not self._closed and self._cold_active >= self.limits.max_cold_starts:
                self._cond.wait()
            if self._closed or pool.size() >= pool.cap:
                return
            pool.starting += 1
            self._cold_active += 1
        self._grow(pool, park=True)

    def _park(self, env: _Environment) -> None:
        """Back to the idle list, unless it must not serve again."""
        pool = self._pools[env.fn.logical_id]
        with self._cond:
            pool.busy.discard(env)
            keep = not self._closed and env.alive() and env.sandbox.broken is None
            if keep:
                env.last_used = time.monotonic()
                pool.idle.append(env)
            else:
                self._all.discard(env)
            self._cond.notify_all()
        if not keep:
            env.destroy()

    def _forget(self, env: _Environment) -> None:
        pool = self._pools[env.fn.logical_id]
        with self._cond:
            env.retired = True
            pool.busy.discard(env)
            if env in pool.idle:
                pool.idle.remove(env)
            self._all.discard(env)
            self._cond.notify_all()

    def _reset(self, env: _Environment, reason: str) -> None:
        """Lambda's reset after a timeout or crash: the environment never serves again."""
        self._forget(env)
        if env.externals:  # their SHUTDOWN may take 2 s: not on the caller's time
            threading.Thread(target=self._shutdown, args=(env, reason, False), daemon=True).start()
        else:
            env.crash()
            env.destroy()

    @staticmethod
    def _shutdown(env: _Environment, reason: str, graceful: bool) -> None:
        env.finish_shutdown(env.begin_shutdown(reason, graceful))

    def environment_exited(self, env: _Environment) -> None:
        """From the reaper: a dead environment leaves the pool at once, unless an invoker is
        still waiting on it (that invoker reports the crash and resets it)."""
        pool = self._pools[env.fn.logical_id]
        invocation = env.invocation
        with self._cond:
            orphan = env in pool.idle or (
                env in pool.busy and (invocation is None or invocation.responded is not None)
            )
        if orphan:
            self._forget(env)
            env.destroy()

    def _supervise(self) -> None:
        """Enforce the deadline of post-runtime phases (extensions still busy after it), and
        shut down environments idle for longer than `idle_timeout_s`, as Lambda does."""
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self._cond:
                if self._closed:
                    return
                busy = [e for pool in self._pools.values() for e in pool.busy]
                stale = self._take_stale(now)
            for env in stale:
                threading.Thread(
                    target=self._shutdown, args=(env, "spindown", True), daemon=True
                ).start()
            for env in busy:
                overdue = env.sandbox.post_runtime_overdue(now)
                if overdue is not None:
                    self._report(env, overdue, status="timeout")
                    self._reset(env, "timeout")

    def _take_stale(self, now: float) -> list[_Environment]:
        """Idle environments past the idle timeout, out of the pool (caller holds the lock)."""
        limit = self.limits.idle_timeout_s
        if not limit:
            return []
        stale = [e for p in self._pools.values() for e in p.idle if now - e.last_used > limit]
        for env in stale:
            self._pools[env.fn.logical_id].idle.remove(env)
            self._all.discard(env)
            env.retired = True
        return stale

    def invocation_completed(
        self, env: _Environment, invocation: Invocation, post_s: float
    ) -> None:
        """From the sandbox: the runtime and every extension are waiting in `next` again."""
        self._report(env, invocation, post_s=post_s)
        env.invocation = None
        self._park(env)

    # --- invoke ----------------------------------------------------------------------------------

    def invoke(self, name_or_arn: str, payload: Any) -> tuple[Any, dict[str, Any] | None]:
        """Run one invocation: (result, None) or (None, Lambda error payload)."""
        fn = self.function(name_or_arn)
        pool = self._pools[fn.logical_id]
        data = json.dumps(payload)
        fault = FAULTS.for_invocation(fn.logical_id, payload, data) if FAULTS else None
        request_id, trace = str(uuid.uuid4()), xray_trace_header()
        queue_deadline = time.monotonic() + self.limits.queue_timeout_s
        for _attempt in range(_ATTEMPTS):
            acquired = self._acquire(pool, queue_deadline)
            if isinstance(acquired, dict):
                return None, acquired
            invocation = Invocation(request_id, fn.arn, data.encode(), fn.timeout, trace)
            outcome = self._run(acquired, invocation, fault)
            if outcome is not None:
                return outcome
        return None, exit_error(request_id)

    def _run(
        self, env: _Environment, invocation: Invocation, fault: Fault | None
    ) -> tuple[Any, dict[str, Any] | None] | None:
        """One attempt on one environment; None if the event never reached its runtime."""
        action = fault.action if fault is not None else None
        env.invocation = invocation
        if action == "crash_before":
            env.crash()
            return self._crashed(env, invocation)
        if fault is not None and action == "delay":
            time.sleep(max(0.0, min(fault.delay_ms / 1000, invocation.deadline - time.monotonic())))
            if time.monotonic() >= invocation.deadline:
                return self._timed_out(env, invocation)
        invocation.crash_after = action == "crash_after"
        if not env.sandbox.dispatch(invocation):
            self._forget(env)
            env.destroy()
            return None
        outcome = env.sandbox.wait_answer(invocation)
        if outcome == "undelivered":
            self._forget(env)
            env.destroy()
            return None
        if outcome == "timeout":
            return self._timed_out(env, invocation)
        if invocation.responded is None:  # the process died (or was killed) mid-invocation
            return self._crashed(env, invocation)
        if invocation.error is not None:
            return None, invocation.error
        return _decode(invocation.result or b"null"), None

    def _crashed(
        self, env: _Environment, invocation: Invocation
    ) -> tuple[Any, dict[str, Any] | None]:
        self._report(env, invocation, status="error", error_type="Runtime.ExitError")
        self._reset(env, "failure")
        return None, exit_error(invocation.request_id, env.sandbox.dead or exit_description(-9))

    def _timed_out(
        self, env: _Environment, invocation: Invocation
    ) -> tuple[Any, dict[str, Any] | None]:
        self._report(env, invocation, status="timeout")
        self._reset(env, "timeout")  # Lambda ends the environment of a timed-out invocation
        message = f"Task timed out after {env.fn.timeout:.2f} seconds"
        return None, {"errorType": "Sandbox.Timedout", "errorMessage": message}

    def _report(
        self,
        env: _Environment,
        invocation: Invocation,
        *,
        post_s: float = 0.0,
        status: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """The REPORT line Lambda writes to the function's log stream (here: stderr)."""
        if not self.limits.reports:
            return
        # Rounded as printed first: the billed figure is the ceiling of the printed ones.
        duration_ms = round((time.monotonic() - invocation.started) * 1000, 2)
        init_ms, env.init_ms = env.init_ms, None
        init_ms = None if init_ms is None else round(init_ms, 2)
        billed = math.ceil(duration_ms + (init_ms or 0.0))  # INIT is billed since 2025-08
        fields = [
            f"REPORT RequestId: {invocation.request_id}",
            f"Duration: {duration_ms:.2f} ms",
            f"Billed Duration: {billed} ms",
            f"Memory Size: {env.fn.memory} MB",
            f"Max Memory Used: {env.peak_mb()} MB",
        ]
        if init_ms is not None:
            fields.append(f"Init Duration: {init_ms:.2f} ms")
        fields.append(f"Post-Runtime Extensions Duration: {post_s * 1000:.2f} ms")
        if status is not None:
            fields.append(f"Status: {status}")
        if error_type is not None:
            fields.append(f"Error Type: {error_type}")
        sys.stderr.write("\t".join(fields) + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Spindown: every environment gets Lambda's SHUTDOWN, then whatever is left is killed."""
        with self._cond:
            self._closed = True
            envs = list(self._all)
            self._all.clear()
            for pool in self._pools.values():
                pool.idle.clear()
                pool.busy.clear()
            self._cond.notify_all()
        deadlines = [env.begin_shutdown("spindown", graceful=True) for env in envs]
        for env, deadline in zip(envs, deadlines, strict=True):
            env.finish_shutdown(deadline)


def _finishing(env: _Environment) -> bool:
    invocation = env.invocation
    return invocation is not None and invocation.responded is not None


def _decode(result: bytes) -> Any:
    try:
        return json.loads(result)
    except ValueError:  # a handler may return raw bytes (application/unknown)
        return result.decode("utf-8", "replace")
