"""`python -m local.stack` (`make run`): the whole platform on 127.0.0.1, no Docker.

AWS emulator (moto; every Lambda execution environment its own `awslambdaric` process) +
Stripe simulator + API Gateway emulator (with `/_local/faults`, see local.faults).
Ports: PAYMENTS_PORT (API, default 3000), STRIPE_SIM_PORT (default 12111),
AWS_EMULATOR_PORT (default ephemeral). Runtime knobs: LOCAL_MAX_ENVIRONMENTS,
LOCAL_MAX_COLD_STARTS, LOCAL_QUEUE_TIMEOUT_SECONDS, LOCAL_IDLE_TIMEOUT_SECONDS,
LOCAL_REPORT_LINES (local.workers).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The emulator, API and runtime modules (moto, boto3: seconds to import on a busy machine)
# are imported where they are used, so that `python -m local.stack` catches Ctrl-C before
# they load: a Ctrl-C during start-up stops it quietly, with no KeyboardInterrupt traceback.
if TYPE_CHECKING:
    from local.api import ApiHandle
    from local.aws import EmulatorHandle
    from local.scheduler import Scheduler

LOCAL_STRIPE_KEY = "sk_test_local"
LOCAL_WEBHOOK_SECRET = "whsec_local_secret"  # noqa: S105 - the local simulator's test secret
LOCAL_RECONCILE_DEFAULTS = {
    "RECONCILE_GRACE_SECONDS": "3",
    "RECONCILE_NO_CHARGE_AFTER_SECONDS": "30",
    "RECONCILE_SEARCH_FRESHNESS_SECONDS": "3",
    "RECONCILE_BACKOFF_SECONDS": "2",
    "RECONCILE_BACKOFF_MAX_SECONDS": "30",
}


class PortError(RuntimeError):
    """A server's port cannot be listened on; the message is the one line to print."""

    def __init__(self, what: str, port: int, why: str) -> None:
        super().__init__(f"{what} port {port} {why}")
        self.port = port


class PortInUseError(PortError):
    def __init__(self, what: str, port: int) -> None:
        super().__init__(what, port, "is already in use")


def _bind(what: str, port: int, start: Any) -> Any:
    """Run a server start-up, naming the port when it is taken (or not allowed)."""
    try:
        return start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(what, port) from exc
        if exc.errno == errno.EACCES:  # below 1024 without the privilege
            raise PortError(what, port, "is not allowed for this user (permission denied)") from exc
        raise


def start_stripe_sim(port: int) -> Any | None:
    """The Stripe simulator (someone else's module); None if it is not available."""
    try:
        from local.stripe_sim import make_app, serve
    except ImportError:
        print("warning: local.stripe_sim.serve not available; no Stripe simulator", file=sys.stderr)
        return None
    from local.aws import check_port_free

    # The simulator checks the same key the functions send.
    app = make_app(LOCAL_STRIPE_KEY)
    _bind("Stripe simulator", port, lambda: check_port_free(port))
    return _bind("Stripe simulator", port, lambda: serve("127.0.0.1", port, app=app))


def function_env(sim_url: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """What the functions need locally; shell values win for the pass-through variables."""
    env = {"STRIPE_API_KEY": LOCAL_STRIPE_KEY}
    if sim_url:
        env["STRIPE_API_BASE"] = sim_url
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    if environ.get("TRACES_EXPORTER_FILE"):
        env["TRACES_EXPORTER_FILE"] = environ["TRACES_EXPORTER_FILE"]
    elif not environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        Path(".local").mkdir(exist_ok=True)
        env["TRACES_EXPORTER_FILE"] = str(Path(".local/traces.jsonl").resolve())
    # CloudWatch EMF documents go to a file: the terminal keeps the function logs readable.
    Path(".local").mkdir(exist_ok=True)
    env["EMF_OUTPUT_FILE"] = str(Path(".local/emf.jsonl").resolve())
    # Locally every invocation writes, so a payment shows up in Prometheus at once.
    env["PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS"] = "0"
    # Reconciliation within seconds: a short grace period; "no charge" only once no request
    # of the payment can still be in flight (the workflow's 25 s budget) and two lookups
    # spaced wider than the simulator's search freshness (2 s) found nothing.
    env.update(LOCAL_RECONCILE_DEFAULTS)
    for name in (
        *LOCAL_RECONCILE_DEFAULTS,
        "STRIPE_WEBHOOK_SECRETS",
        "PROMETHEUS_REMOTE_WRITE_URL",
        "PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS",
        "LOCAL_MERCHANT_KEY",
        "LOCAL_MERCHANT_SECRET",
    ):
        if environ.get(name):
            env[name] = environ[name]
    return env


@dataclass
class StackHandle:
    api_url: str
    sim_url: str | None
    emulator: EmulatorHandle
    api: ApiHandle
    sim: Any | None
    scheduler: Scheduler | None = None

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self.api.stop()
        self.emulator.stop()
        if self.sim is not None:
            self.sim.stop()


def start_stack(
    port: int = 0,
    sim_port: int = 0,
    aws_port: int = 0,
    template_path: str = "template.yaml",
    env_overrides: Mapping[str, str] | None = None,
    *,
    isolated: bool = False,
    scheduled: bool | None = None,
) -> StackHandle:
    """Start everything (0 = ephemeral port); on failure, stop what was started and raise.

    `isolated` runs every Lambda execution environment in its own process (`make run`);
    in-process functions (the default) let tests patch and measure inside the handlers.
    `scheduled` runs the template's schedules (the reconciler); default: with `isolated`,
    so in-process tests see no background invocations.
    """
    from local.api import serve_api
    from local.aws import start_emulator
    from local.scheduler import Scheduler, schedules

    sim = start_stripe_sim(sim_port)
    sim_url: str | None = getattr(sim, "url", None)
    started: list[Any] = [sim] if sim else []
    try:
        env = {**function_env(sim_url, os.environ), **(env_overrides or {})}
        emulator = _bind(
            "AWS emulator",
            aws_port,
            lambda: start_emulator(template_path, aws_port, env, isolated=isolated),
        )
        started.append(emulator)
        api = _bind("API", port, lambda: serve_api(emulator.template, emulator.runtime, port))
        started.append(api)
        _send_webhooks(sim, api.url)
        scheduler = None
        if isolated if scheduled is None else scheduled:
            entries = schedules(Path(template_path), {**os.environ, **(env_overrides or {})})
            scheduler = Scheduler(emulator.runtime, entries).start()
    except BaseException:
        for item in reversed(started):
            item.stop()
        raise
    return StackHandle(api.url, sim_url, emulator, api, sim, scheduler)


def _send_webhooks(sim: Any | None, api_url: str) -> None:
    """The simulator delivers signed events to the stack's own webhook route."""
    if sim is None:
        return
    from local.stripe_sim import WebhookEndpoint

    secret = os.environ.get("STRIPE_WEBHOOK_SECRETS", LOCAL_WEBHOOK_SECRET).split(",")[0]
    sim.app.configure_webhooks(WebhookEndpoint(url=f"{api_url}/webhooks/stripe", secrets=(secret,)))


def banner(stack: StackHandle, seconds: float) -> str:
    em = stack.emulator
    lines = [
        f"Payments API       {stack.api_url}   (ready in {seconds:.1f}s)",
        f"Demo merchant      X-API-Key {em.merchant_key}   secret {em.merchant_secret}",
        f"AWS emulator       {em.url}   tables {', '.join(em.tables.values())}",
    ]
    if stack.sim_url:
        lines += [
            f"Stripe simulator   {stack.sim_url}",
            f'  faults:          curl -X POST {stack.sim_url}/_sim/fault -d \'{{"mode":"error"}}\'',
            f'                   curl -X POST {stack.sim_url}/_sim/fault -d \'{{"mode":"none"}}\'',
        ]
    fault = '{"function":"ChannelFunction","step":"ChannelPayment","action":"crash_after"}'
    lines += [
        f"Function faults    curl -X POST {stack.api_url}/_local/faults -d '{fault}'",
        f"                   curl {stack.api_url}/_local/faults   (GET lists, DELETE clears)",
        f"Try                curl {stack.api_url}/health      (Ctrl-C stops)",
    ]
    return "\n".join(lines)


def port_from_env(environ: Mapping[str, str], name: str, default: int) -> int:
    """A port number from the environment; ValueError (one line) when it is not one."""
    raw = environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError(f"{name} must be a port number from 0 to 65535, got {raw!r}")
    return int(raw)


def stack_ports(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """(API, Stripe simulator, AWS emulator) ports from PAYMENTS_PORT & co."""
    return (
        port_from_env(environ, "PAYMENTS_PORT", 3000),
        port_from_env(environ, "STRIPE_SIM_PORT", 12111),
        port_from_env(environ, "AWS_EMULATOR_PORT", 0),
    )


def stop_signals() -> threading.Event:
    """SIGINT/SIGTERM set the returned event instead of raising KeyboardInterrupt anywhere.

    The execution environments run in their own sessions, so a terminal's Ctrl-C reaches
    this process only; stopping the stack ends them (Lambda's SHUTDOWN, then SIGKILL).
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stopping


def with_stop_signals(run: Callable[[threading.Event], int]) -> int:
    """`run(stopping)` with `stop_signals()` in force; the previous handlers back after it
    (a main() also runs inside tests)."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(stop_signals())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main() -> int:
    began = time.monotonic()
    # First, before the (slow) imports and start: a Ctrl-C then is no traceback either.
    return with_stop_signals(lambda stopping: _run(stopping, began))


def _run(stopping: threading.Event, began: float) -> int:
    try:
        port, sim_port, aws_port = stack_ports(os.environ)
        from local.workers import Limits

        Limits.from_env(os.environ)  # the runtime's knobs: a bad one is a one-line error too
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if stopping.is_set():  # Ctrl-C while the modules loaded: nothing was started
        print("stopped", flush=True)
        return 0
    try:
        stack = start_stack(port, sim_port, aws_port, isolated=True)
    except PortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if not stopping.is_set():
            print(banner(stack, time.monotonic() - began), flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        stack.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
