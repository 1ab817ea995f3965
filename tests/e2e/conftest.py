"""The local stack as a user runs it (`python -m local.stack`), reached over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from payments.auth import signed_headers

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    def __init__(self, process: subprocess.Popen[str], api: str, sim: str, traces: Path) -> None:
        self.process, self.api, self.sim, self.traces = process, api, sim, traces

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        secret: str = "sk_demo_secret",
        key: str = "mk_demo",
        query: str = "",
    ) -> requests.Response:
        raw = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        all_headers = {
            "Content-Type": "application/json",
            **signed_headers(key, secret, method, path, raw),
            **(headers or {}),
        }
        # The query string is not part of the signature (SPEC §2).
        url = self.api + path + (f"?{query}" if query else "")
        return requests.request(method, url, data=raw, headers=all_headers, timeout=30)

    def intents(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.sim}/_sim/payment_intents", timeout=5).json()["data"])

    def fault(self, mode: str) -> None:
        requests.post(f"{self.sim}/_sim/fault", json={"mode": mode}, timeout=5).raise_for_status()


def start(tmp: Path, **extra_env: str) -> Stack:
    api_port, sim_port = free_port(), free_port()
    env = {
        **os.environ,
        "PAYMENTS_PORT": str(api_port),
        "STRIPE_SIM_PORT": str(sim_port),
        "STRIPE_READ_TIMEOUT_SECONDS": "1",
        "STRIPE_MAX_RETRIES": "1",
        "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT}",
        "TRACES_EXPORTER_FILE": str(tmp / "traces.jsonl"),
        **extra_env,
    }
    env.pop("PROMETHEUS_REMOTE_WRITE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "local.stack"],
        cwd=ROOT,
        env=env,
        stdout=(tmp / "stack.log").open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    api = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((tmp / "stack.log").read_text())
        try:
            if requests.get(f"{api}/health", timeout=10).status_code == 200:
                return Stack(process, api, f"http://127.0.0.1:{sim_port}", tmp / "traces.jsonl")
        except requests.RequestException:  # not listening yet, or the gateway still cold
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("local stack did not become ready in 60 s")


def stop(stack: Stack) -> int:
    stack.process.send_signal(signal.SIGTERM)
    try:
        return stack.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        stack.process.kill()
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        if s.process.poll() is None:
            stop(s)
