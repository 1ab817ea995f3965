"""Shared helpers: statistics, loopback sinks, signed events, child processes, results file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from local.events import api_event

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
DEMO_KEY, DEMO_SECRET, DEMO_MERCHANT = "mk_demo", "sk_demo_secret", "merch_demo"
STRIPE_KEY = "sk_test_local"
FUNCTIONS = ("create_payment", "refund", "risk_check", "order", "channel")
SERVICES = {
    "create_payment": "payment-gateway",
    "refund": "refund-service",
    "risk_check": "risk-service",
    "order": "order-service",
    "channel": "channel-adapter",
}

Json = dict[str, Any]


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100.0 * len(ordered))))
    return float(ordered[rank - 1])


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (prints well in a terminal and pastes into the README)."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --------------------------------------------------------------------------- machine


def machine() -> Json:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_mb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_mb": mem_mb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc/self/status."""
    current = peak = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return current, peak


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# --------------------------------------------------------------------------- loopback sinks


class _SinkHandler(BaseHTTPRequestHandler):
    """Accepts any POST (remote write, OTLP) with an empty success response."""

    server: _Sink

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.server.delay_s:
            time.sleep(self.server.delay_s)  # a slow backend
        self.server.count += 1
        status = 200 if self.path.endswith("/v1/traces") else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        if status == 200:
            self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Sink(ThreadingHTTPServer):
    daemon_threads = True
    count = 0
    delay_s = 0.0


class Sink:
    """A loopback HTTP receiver for Prometheus remote write and OTLP/HTTP traces."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.server = _Sink(("127.0.0.1", 0), _SinkHandler)
        self.server.delay_s = delay_s
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def count(self) -> int:
        return self.server.count

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HungReceiver:
    """Listens but never accepts: connects succeed, reads hang (a stuck backend)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def stop(self) -> None:
        self.sock.close()


def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- events


def payment_body(amount: int = 1999, payment_method: str = "pm_card_visa") -> Json:
    return {
        "merchant_order_no": f"bench-{uuid.uuid4().hex[:16]}",
        "amount": amount,
        "currency": "USD",
        "payment_method": payment_method,
        "customer": {"id": f"cus_{uuid.uuid4().hex[:10]}", "country": "US"},
    }


def create_payment_event() -> Json:
    return api_event("POST", "/api/v1/payments", body=payment_body())


# --------------------------------------------------------------------------- children


def run_child(
    module: str,
    spec: Json,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    prefix: Sequence[str] = (),
) -> Json:
    """Run `python -m <module> --child` in a fresh interpreter; its result is one JSON object.

    The child's stdout carries EMF and logs (discarded: written to /dev/null as Lambda
    writes to its log pipe); the result travels through a temporary file. `prefix` goes
    before the interpreter (e.g. `count_instructions`' valgrind command).
    """
    with tempfile.NamedTemporaryFile(prefix="bench-", suffix=".json", delete=False) as handle:
        out = handle.name
    try:
        child_env = {**os.environ, **(env or {})}
        child_env.setdefault("PYTHONPATH", f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}")
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", module, "--child", json.dumps({**spec, "out": out})],
            cwd=ROOT,
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
        text = Path(out).read_text() if Path(out).exists() else ""
        if proc.returncode != 0 or not text:
            tail = proc.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"{module} child failed ({proc.returncode}): {tail}")
        result: Json = json.loads(text)
        return result
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)


# --------------------------------------------------------------------------- instructions


def callgrind_total(path: Path) -> float:
    """Instructions of a callgrind output file (its summary line: all threads together)."""
    text = path.read_text(errors="replace")
    match = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE)
    if match is None:
        match = re.search(r"^totals:\s+(\d+)", text, re.MULTILINE)
    assert match is not None, "no callgrind summary"
    return float(match.group(1))


def count_instructions(run: Callable[[list[str]], None], keep: Path | None = None) -> float:
    """Instructions executed by the whole process that `run(prefix)` starts with `prefix`
    (valgrind callgrind) in front of its command; all threads are counted (callgrind does not
    separate them unless asked). `keep`: a copy of the output file for callgrind_annotate.
    """
    with tempfile.TemporaryDirectory(prefix="cg-") as tmp:
        out = Path(tmp) / "cg.out"
        run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        total = callgrind_total(out)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out, keep)
        return total


def child_main(argv: Sequence[str], body: Any) -> bool:
    """If argv is `--child <json>`, run body(spec) and write its JSON result; True if so."""
    if len(argv) < 2 or argv[0] != "--child":
        return False
    spec = json.loads(argv[1])
    quiet_logs()
    result = body(spec)
    Path(spec["out"]).write_text(json.dumps(result))
    return True


def quiet_logs() -> None:
    import logging

    for name in ("werkzeug", "moto", "botocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- results


def write_results(section: str, data: Json) -> None:
    """Merge one section (`bench` or `load`) into bench/results.json."""
    existing: Json = {}
    with contextlib.suppress(OSError, ValueError):
        existing = json.loads(RESULTS.read_text())
    existing[section] = data
    RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True, default=str) + "\n")
