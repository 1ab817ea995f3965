"""The local stack: start/stop in-process, port errors, `python -m local.stack` signals."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from local import stack as stack_mod
from local.stack import StackHandle, banner, function_env, start_stack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack() -> Iterator[StackHandle]:
    handle = start_stack(template_path=str(ROOT / "template.yaml"))
    yield handle
    handle.stop()


def _signed(method: str, path: str, body: str) -> dict[str, str]:
    ts = str(int(time.time()))
    msg = f"{ts}.{method}.{path}.{body}".encode()
    sig = hmac.new(b"sk_demo_secret", msg, hashlib.sha256).hexdigest()
    return {
        "X-API-Key": "mk_demo",
        "X-Timestamp": ts,
        "X-Signature": sig,
        "Content-Type": "application/json",
    }


def test_health_and_a_payment_through_the_whole_stack(stack: StackHandle) -> None:
    assert stack.sim_url is not None
    health = requests.get(f"{stack.api_url}/health", timeout=10)
    assert health.status_code == 200
    body = json.dumps(
        {
            "merchant_order_no": "stack-1",
            "amount": 1999,
            "currency": "USD",
            "payment_method": "pm_card_visa",
        }
    )
    resp = requests.post(
        f"{stack.api_url}/api/v1/payments",
        data=body,
        headers=_signed("POST", "/api/v1/payments", body),
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "succeeded"
    assert "X-Trace-ID" in resp.headers


def test_banner_names_urls_key_and_fault_knob(stack: StackHandle) -> None:
    text = banner(stack, 1.23)
    assert stack.api_url in text and "mk_demo" in text and "sk_demo_secret" in text
    assert f"{stack.sim_url}/_sim/fault" in text and "1.2s" in text
    assert f"curl -X POST {stack.api_url}/_local/faults -d" in text


def test_function_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = function_env("http://127.0.0.1:1", {"PROMETHEUS_REMOTE_WRITE_URL": "http://p/w"})
    assert env["STRIPE_API_BASE"] == "http://127.0.0.1:1"
    assert env["STRIPE_API_KEY"] == "sk_test_local"
    assert env["TRACES_EXPORTER_FILE"].endswith(".local/traces.jsonl")
    assert env["PROMETHEUS_REMOTE_WRITE_URL"] == "http://p/w"
    otlp = function_env(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"})
    assert otlp["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4318"
    assert "TRACES_EXPORTER_FILE" not in otlp and "STRIPE_API_BASE" not in otlp
    mine = function_env(None, {"TRACES_EXPORTER_FILE": "/tmp/mine.jsonl"})
    assert mine["TRACES_EXPORTER_FILE"] == "/tmp/mine.jsonl"  # the shell's choice wins
    assert env["EMF_OUTPUT_FILE"].endswith(".local/emf.jsonl")
    assert env["PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS"] == "0"


def test_port_in_use_is_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.chdir(ROOT)
        monkeypatch.setenv("PAYMENTS_PORT", str(port))
        monkeypatch.setenv("STRIPE_SIM_PORT", "0")
        monkeypatch.setenv("AWS_EMULATOR_PORT", "0")
        assert stack_mod.main() == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: API port {port} is already in use"


@pytest.mark.parametrize(
    ("name", "value"),
    [("PAYMENTS_PORT", "abc"), ("STRIPE_SIM_PORT", "70000"), ("LOCAL_MAX_ENVIRONMENTS", "0")],
)
def test_bad_settings_are_one_line_errors(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, value)
    assert stack_mod.main() == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name} must be") and repr(value) in err
    assert err.count("\n") == 1


def test_observe_rejects_bad_ports_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from local import observe

    monkeypatch.setenv("PROMETHEUS_PORT", "-1")
    assert observe.main() == 2
    assert (
        capsys.readouterr().err
        == "error: PROMETHEUS_PORT must be a port number from 0 to 65535, got '-1'\n"
    )


def test_observe_runs_the_process_per_environment_runtime(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make observe` starts the stack as `make run` does (one process per environment:
    series labelled per function, one cold start per environment), writing to Prometheus."""
    from local import observe

    seen: dict[str, object] = {}

    def fake_start_stack(*args: object, **kwargs: object) -> StackHandle:
        seen.update(kwargs)
        raise stack_mod.PortInUseError("API", 1)  # stop there: nothing else to start

    monkeypatch.setenv("PROMETHEUS_PORT", "9999")
    # observe sets it in os.environ for the stack: gone again (as before) after the test
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_URL", "")
    monkeypatch.delenv("PROMETHEUS_REMOTE_WRITE_URL")
    monkeypatch.setattr(observe, "start_monitoring", lambda *a: [])
    monkeypatch.setattr(observe, "start_stack", fake_start_stack)
    before = signal.getsignal(signal.SIGINT)
    assert observe.main() == 1
    assert seen["isolated"] is True
    assert seen["env_overrides"] == {
        "PROMETHEUS_REMOTE_WRITE_URL": "http://127.0.0.1:9999/api/v1/write"
    }
    assert signal.getsignal(signal.SIGINT) is before  # the handlers it replaced are back
    assert "error: API port 1 is already in use" in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _start_stack(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """`python -m local.stack` on ephemeral ports, stdout piped, stderr to a file; in its own
    process group, as a shell job: Ctrl-C goes to the group."""
    env = {
        **os.environ,
        "PAYMENTS_PORT": "0",
        "STRIPE_SIM_PORT": "0",
        "AWS_EMULATOR_PORT": "0",
        "PYTHONPATH": f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}",
    }
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local.stack"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    return proc, stderr


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_run_and_stop_cleanly(how: str, tmp_path: Path) -> None:
    proc, stderr = _start_stack(tmp_path)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Payments API")
        url = first.split()[2]
        assert requests.get(f"{url}/health", timeout=30).status_code == 200
        environments = _children(proc.pid)
        assert environments  # the execution environments (awslambdaric processes)
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground job
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().strip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logged = stderr.read_text()
    assert "Traceback" not in logged and "KeyboardInterrupt" not in logged, logged[-2000:]
    assert not [pid for pid in environments if _alive(pid)]


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_during_start_up_stops_quietly(tmp_path: Path) -> None:
    """A Ctrl-C while the emulator's modules load (seconds on a busy machine): no traceback."""
    import _ssl

    library = Path(getattr(_ssl, "__file__", "") or "").name
    if not library:
        pytest.skip("_ssl is built into this Python: no marker for the import phase")
    proc, stderr = _start_stack(tmp_path)
    seen: set[int] = set()
    try:
        # ssl is first loaded by boto3/urllib3, on the way to moto: the stack is mid-import,
        # long before it serves anything.
        while proc.poll() is None and not _loaded(proc.pid, library):
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)
        while proc.poll() is None:  # any environment started on the way must end with it
            seen.update(_children(proc.pid))
            time.sleep(0.05)
        assert proc.wait(timeout=60) == 0
        assert proc.stdout is not None
        assert proc.stdout.read().strip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logged = stderr.read_text()
    assert "Traceback" not in logged and "KeyboardInterrupt" not in logged, logged[-2000:]
    assert not [pid for pid in seen if _alive(pid)]


def test_a_port_not_allowed_is_one_line_error() -> None:
    def denied() -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(stack_mod.PortError) as caught:
        stack_mod._bind("API", 80, denied)
    assert str(caught.value) == "API port 80 is not allowed for this user (permission denied)"
