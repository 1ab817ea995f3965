"""The internal Lambda extension against a Runtime + Extensions API on loopback (real HTTP).

`bench.lambda_api.FakeLambdaApi` speaks Lambda's protocol (register only during INIT, INVOKE
on event/next, the runtime's next held until every extension asked for its next event);
the runtime is `MiniRuntime` (awslambdaric's loop shape, in a thread) or the real
`awslambdaric` in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.lambda_api import FakeLambdaApi, MiniRuntime
from payments import observability
from payments.observability import instrument, metrics, tracing
from payments.observability.extension import EXTENSION_NAME

ROOT = Path(__file__).resolve().parents[2]
ENV = (
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "JAEGER_SAMPLING_RATE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "TRACES_EXPORTER_FILE",
    "PROMETHEUS_REMOTE_WRITE_URL",
)


class Recording(SpanExporter):
    """Records when each batch arrived; can be slow or refuse (a backend up, slow, down)."""

    def __init__(self, delay_s: float = 0.0, ok: bool = True) -> None:
        self.delay_s, self.ok = delay_s, ok
        self.batches: list[tuple[float, list[str]]] = []
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        time.sleep(self.delay_s)
        with self.lock:
            self.batches.append((time.perf_counter(), [s.name for s in spans]))
        return SpanExportResult.SUCCESS if self.ok else SpanExportResult.FAILURE

    def names(self) -> list[str]:
        with self.lock:
            return [name for _, batch in self.batches for name in batch]

    def shutdown(self) -> None:
        return None


@pytest.fixture
def lambda_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLambdaApi]:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    saved = dict(os.environ)  # `environment()` and tests set variables of their own
    api = FakeLambdaApi()
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", api.address)
    observability.reset()
    yield api
    observability.reset()
    api.stop()
    os.environ.clear()
    os.environ.update(saved)
    observability.reset()


def environment(exporter: SpanExporter, **env: str) -> Any:
    """INIT: settings, exporters, then the handler module's decoration registers."""
    for name, value in env.items():
        os.environ[name] = value
    tracing.setup("ext-service", exporters=[exporter])

    @instrument("ext-service")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"n": event["n"]}

    return handler


def marks(api: FakeLambdaApi, what: str) -> list[float]:
    return [t for name, _, t in api.timeline if name == what]


def test_registers_during_init_and_exports_after_the_response_before_next(
    lambda_api: FakeLambdaApi,
) -> None:
    exporter = Recording()
    handler = environment(exporter)
    assert lambda_api.registrations == [(EXTENSION_NAME, {"events": ["INVOKE"]})]
    runtime = MiniRuntime(lambda_api, handler).start()
    outcome = lambda_api.invoke({"n": 1})
    assert outcome.result == {"n": 1} and not outcome.error
    assert lambda_api.post_runtime() is not None
    (response,) = marks(lambda_api, "response")
    (exported, names), *_ = exporter.batches
    assert names == ["ext-service"]
    # register < runtime's first next; response < export < the extension's next `next`
    assert marks(lambda_api, "register")[0] < marks(lambda_api, "runtime_next")[0]
    after = [t for t in marks(lambda_api, "extension_next") if t > response]
    assert response < exported < after[0]
    assert observability.container().extension is not None
    assert observability.container().extension.invocations == 1
    runtime.stop()


def test_busy_traffic_flushes_periodically_not_after_every_invocation(
    lambda_api: FakeLambdaApi,
) -> None:
    exporter = Recording()
    handler = environment(exporter, OBSERVABILITY_FLUSH_INTERVAL_MS="60000")
    runtime = MiniRuntime(lambda_api, handler).start()
    for n in range(5):
        lambda_api.invoke({"n": n})
        lambda_api.post_runtime()
    # The first invocation (after INIT: sporadic) flushed; the next four came at once.
    assert len(exporter.batches) == 1
    assert exporter.names() == ["ext-service"]
    assert len(observability.container().processor.queues[0]) == 4  # waiting, not lost
    observability.container().flush(2.0, final=True)  # the SIGTERM flush at shutdown
    assert len(exporter.names()) == 5
    runtime.stop()


def test_a_slow_backend_is_bounded_and_loses_nothing(lambda_api: FakeLambdaApi) -> None:
    exporter = Recording(delay_s=0.6)  # a backend 600 ms slower per request
    handler = environment(exporter, OBSERVABILITY_FLUSH_TIMEOUT_MS="100")
    runtime = MiniRuntime(lambda_api, handler).start()
    post_runtime = []
    for n in range(4):
        lambda_api.invoke({"n": n})
        post_runtime.append(lambda_api.post_runtime())
    # Loose correctness bound (not a benchmark): the extension stops waiting at its budget,
    # well before the 600 ms export would end.
    assert all(p is not None and p < 0.5 for p in post_runtime), post_runtime
    deadline = time.monotonic() + 10
    while len(exporter.names()) < 4 and time.monotonic() < deadline:
        observability.container().flush(1.0, final=True)
    assert sorted(exporter.names()) == ["ext-service"] * 4
    assert observability.container().processor.dropped() == 0
    runtime.stop()


def test_a_dead_backend_drops_beyond_the_bound_and_counts(lambda_api: FakeLambdaApi) -> None:
    exporter = Recording(ok=False)
    handler = environment(exporter, OBSERVABILITY_SPAN_QUEUE_SIZE="3")
    runtime = MiniRuntime(lambda_api, handler).start()
    for n in range(5):
        assert lambda_api.invoke({"n": n}).result == {"n": n}
        lambda_api.post_runtime()
    (queue,) = observability.container().processor.queues
    assert len(queue) == 3 and queue.dropped == 2
    observability.container().flush(1.0)
    counted = metrics.snapshot()["telemetry_spans_dropped_total"]
    assert counted == {(): 2.0}
    runtime.stop()


def test_without_the_runtime_api_the_same_code_flushes_inline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)
    observability.reset()
    exporter = Recording()
    handler = environment(exporter)
    try:
        handler({"n": 1}, type("Ctx", (), {"aws_request_id": "r1", "function_name": "f"})())
        assert exporter.names() == ["ext-service"]  # exported before the handler returned
        assert observability.container().extension is None
    finally:
        observability.reset()


def test_an_unreachable_extensions_api_falls_back_to_inline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
    observability.reset()
    exporter = Recording()
    try:
        handler = environment(exporter)
        handler({"n": 1}, type("Ctx", (), {"aws_request_id": "r1", "function_name": "f"})())
        assert observability.container().extension is None
        assert exporter.names() == ["ext-service"]
    finally:
        observability.reset()


# --------------------------------------------------------------------------- awslambdaric


class _Sink(BaseHTTPRequestHandler):
    received: list[float] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append(time.perf_counter())
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


APP = """
from payments.observability import instrument

@instrument("ric-service")
def handler(event, context):
    return {"n": event["n"], "request": context.aws_request_id}
"""


def test_the_real_runtime_interface_client_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("awslambdaric")
    (tmp_path / "app.py").write_text(APP)
    api = FakeLambdaApi("ric")
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))},
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "PYTHONPATH": f"{ROOT / 'layers' / 'common'}{os.pathsep}{tmp_path}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
        "OTEL_TRACES_SAMPLER": "always_on",
        "AWS_LAMBDA_FUNCTION_NAME": "ric",
        "OBSERVABILITY_FLUSH_INTERVAL_MS": "0",  # flush after every invocation
        # Wait for every export (the first one builds the OTLP exporter: imports take time).
        "OBSERVABILITY_FLUSH_TIMEOUT_MS": "10000",
    }
    process = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "awslambdaric", "app.handler"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        outcomes = [api.invoke({"n": n}, timeout=60) for n in range(3)]
        assert [o.result["n"] for o in outcomes] == [0, 1, 2]
        assert api.post_runtime(wait_s=10) is not None
        assert [name for name, _ in api.registrations] == [EXTENSION_NAME]
        responses = marks(api, "response")
        nexts = marks(api, "extension_next")
        # Each response is followed by the extension's OTLP export, then its `next`.
        for response in responses:
            exports = [t for t in _Sink.received if t > response]
            later_next = [t for t in nexts if t > response]
            assert exports and later_next and exports[0] < later_next[0]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - reported below
            process.kill()
            process.wait(10)
            raise AssertionError("the runtime did not stop on SIGTERM") from None
        api.stop()
        sink.shutdown()
        sink.server_close()
    assert process.stderr is not None
    assert b"Traceback" not in process.stderr.read()


def test_json_lines_are_written_off_the_response_path(
    lambda_api: FakeLambdaApi, tmp_path: Path
) -> None:
    path = tmp_path / "spans.jsonl"
    os.environ["TRACES_EXPORTER_FILE"] = str(path)
    observability.reset()

    @instrument("file-service")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"n": event["n"]}

    runtime = MiniRuntime(lambda_api, handler).start()
    lambda_api.invoke({"n": 1})
    assert lambda_api.post_runtime() is not None
    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == ["file-service"]
    runtime.stop()
