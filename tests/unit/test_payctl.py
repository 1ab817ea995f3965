"""payctl's settings: PAYMENTS_URL, else the local stack on PAYMENTS_PORT; bad values are one
line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from local.cli import UsageError, base_url, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        ({}, "http://127.0.0.1:3000"),
        ({"PAYMENTS_PORT": "3111"}, "http://127.0.0.1:3111"),
        ({"PAYMENTS_URL": "https://api.example.com/", "PAYMENTS_PORT": "1"}, "https://api.example.com"),
        ({"PAYMENTS_URL": "http://127.0.0.1:4000"}, "http://127.0.0.1:4000"),
    ],
)  # fmt: skip
def test_base_url(environ: dict[str, str], url: str) -> None:
    assert base_url(environ) == url


@pytest.mark.parametrize(
    "environ",
    [
        {"PAYMENTS_PORT": "abc"},
        {"PAYMENTS_PORT": "0"},
        {"PAYMENTS_PORT": "65536"},
        {"PAYMENTS_PORT": "-1"},
        {"PAYMENTS_URL": "localhost:3000"},
        {"PAYMENTS_URL": "http://127.0.0.1:99999"},
        {"PAYMENTS_URL": "http://127.0.0.1:port"},
        {"PAYMENTS_URL": "ftp://127.0.0.1"},
    ],
)
def test_bad_settings_are_usage_errors(environ: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        base_url(environ)


def test_a_bad_port_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PAYMENTS_URL", raising=False)
    monkeypatch.setenv("PAYMENTS_PORT", "30o0")
    assert main(["get", "pay_x"]) == 2
    err = capsys.readouterr().err
    assert err == "payctl: PAYMENTS_PORT must be a port number (1-65535), not '30o0'\n"


def test_bin_payctl_unreachable_port_is_one_line() -> None:
    result = subprocess.run(
        [str(ROOT / "bin" / "payctl"), "get", "pay_x"],
        env={"PATH": "/usr/bin:/bin", "PAYMENTS_PORT": "9"},  # discard: nothing listens
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "payctl: cannot reach http://127.0.0.1:9 (is `make run` running?)\n"


def test_bin_payctl_on_payments_port_into_a_closed_pipe_is_quiet() -> None:
    """`payctl get ... | head -1`: the reader goes before payctl has printed; no traceback."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            body = json.dumps({"payment_no": "pay_x", "lines": ["x" * 100] * 2000}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.Popen(
            [str(ROOT / "bin" / "payctl"), "get", "pay_x"],
            env={"PATH": "/usr/bin:/bin", "PAYMENTS_PORT": str(server.server_address[1])},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # as `head` does once it has its line: every write is EPIPE
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert paths == ["/api/v1/payments/pay_x"]  # it went to PAYMENTS_PORT
    assert stderr == ""
