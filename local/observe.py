"""`python -m local.observe` (`make observe`): the local stack with real Prometheus + Alertmanager.

Prometheus (127.0.0.1:9090) receives the functions' remote writes, evaluates
observability/prometheus/rules.yml and sends alerts to Alertmanager (127.0.0.1:9093). Then the
local stack starts with PROMETHEUS_REMOTE_WRITE_URL pointing at Prometheus. Ctrl-C / SIGTERM
stops everything. Data: .local/prometheus, .local/alertmanager.
Ports: PROMETHEUS_PORT, ALERTMANAGER_PORT, plus those of `python -m local.stack`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from local.stack import (
    PortError,
    StackHandle,
    banner,
    port_from_env,
    stack_ports,
    start_stack,
    with_stop_signals,
)

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "observability"
DATA = ROOT / ".local"


class ObserveError(RuntimeError):
    pass


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ObserveError(f"{names[0]} not found: run `make prometheus` (apt-get install prometheus)")


def _wait_ready(name: str, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ObserveError(f"{name} exited ({process.returncode}):\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ObserveError(f"{name} not ready at {url} after 30 s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return ""


def _spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # Own process group: a terminal Ctrl-C reaches us only, and we stop them in order.
        return subprocess.Popen(  # noqa: S603 - fixed argv
            list(argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def prometheus_config(alertmanager_port: int, prometheus_port: int) -> str:
    """observability/prometheus.yml with absolute rule paths and the chosen ports."""
    text = (OBSERVABILITY / "prometheus.yml").read_text()
    text = text.replace("prometheus/rules.yml", str(OBSERVABILITY / "prometheus" / "rules.yml"))
    text = text.replace("127.0.0.1:9093", f"127.0.0.1:{alertmanager_port}")
    return text.replace("127.0.0.1:9090", f"127.0.0.1:{prometheus_port}")


def start_monitoring(
    prometheus_port: int = 9090, alertmanager_port: int = 9093, data: Path = DATA
) -> list[subprocess.Popen[bytes]]:
    """Alertmanager then Prometheus, both ready; on failure stop what started and raise."""
    prometheus = _binary("prometheus")
    alertmanager = _binary("prometheus-alertmanager", "alertmanager")
    data.mkdir(exist_ok=True)
    (data / "prometheus").mkdir(exist_ok=True)
    (data / "alertmanager").mkdir(exist_ok=True)
    config = data / "prometheus.yml"
    config.write_text(prometheus_config(alertmanager_port, prometheus_port))
    started: list[subprocess.Popen[bytes]] = []
    try:
        am_log = data / "alertmanager.log"
        started.append(
            _spawn(
                [
                    alertmanager,
                    f"--config.file={OBSERVABILITY / 'alertmanager.yml'}",
                    f"--storage.path={data / 'alertmanager'}",
                    f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                    "--cluster.listen-address=",  # no gossip port: single local instance
                ],
                am_log,
            )
        )
        _wait_ready(
            "alertmanager", f"http://127.0.0.1:{alertmanager_port}/-/ready", started[-1], am_log
        )
        prom_log = data / "prometheus.log"
        started.append(
            _spawn(
                [
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--web.enable-remote-write-receiver",
                ],
                prom_log,
            )
        )
        _wait_ready(
            "prometheus", f"http://127.0.0.1:{prometheus_port}/-/ready", started[-1], prom_log
        )
    except BaseException:
        for process in reversed(started):
            stop_process(process)
        raise
    return started


def main() -> int:
    began = time.monotonic()
    try:
        prometheus_port = port_from_env(os.environ, "PROMETHEUS_PORT", 9090)
        alertmanager_port = port_from_env(os.environ, "ALERTMANAGER_PORT", 9093)
        ports = stack_ports(os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Before the runtime's (slow) imports: a Ctrl-C then is no traceback either.
    return with_stop_signals(
        lambda stopping: _run(stopping, began, prometheus_port, alertmanager_port, ports)
    )


def _run(
    stopping: threading.Event,
    began: float,
    prometheus_port: int,
    alertmanager_port: int,
    ports: tuple[int, int, int],
) -> int:
    port, sim_port, aws_port = ports
    try:
        from local.workers import Limits

        Limits.from_env(os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        processes = start_monitoring(prometheus_port, alertmanager_port)
    except ObserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stack: StackHandle | None = None
    try:
        write_url = f"http://127.0.0.1:{prometheus_port}/api/v1/write"
        os.environ["PROMETHEUS_REMOTE_WRITE_URL"] = write_url
        # One process per execution environment, as `make run`: series carry each
        # function's own labels and every environment counts its own cold start.
        stack = start_stack(
            port,
            sim_port,
            aws_port,
            env_overrides={"PROMETHEUS_REMOTE_WRITE_URL": write_url},
            isolated=True,
        )
        print(banner(stack, time.monotonic() - began), flush=True)
        print(
            f"Prometheus         http://127.0.0.1:{prometheus_port}   "
            f"(remote write {write_url}; alerts: /alerts, rules: /rules)\n"
            f"Alertmanager       http://127.0.0.1:{alertmanager_port}\n"
            f"Grafana            provision observability/grafana (datasource uid prometheus)",
            flush=True,
        )
        while not stopping.wait(0.5):
            if any(p.poll() is not None for p in processes):
                print(
                    "error: prometheus or alertmanager exited (see .local/*.log)", file=sys.stderr
                )
                return 1
        return 0
    except PortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.stop()
        for process in reversed(processes):
            stop_process(process)
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
