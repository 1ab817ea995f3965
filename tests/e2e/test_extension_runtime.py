"""The layer's real telemetry extension under the local Lambda runtime (`local.workers`).

A function on the real layer (tests/fixtures/telemetry_function: `instrument()`, one span of
its own, one counter) runs as `python -m awslambdaric` against the local Runtime API and
Extensions API (ProcessRuntime, as `make run`), exporting over OTLP/HTTP and Prometheus
remote write to receivers in this process on 127.0.0.1 that answer at once, 600 ms late,
refuse connections, or hold every request until the test lets go.

What README's "export never on the response path, bounded before freeze" promises, checked
from the outside:

* the caller has its result before the export of that invocation's telemetry is
  acknowledged; the flush is in the REPORT line's Post-Runtime Extensions Duration, bounded by
  OBSERVABILITY_FLUSH_TIMEOUT_MS whatever the backend does (locally, as on Lambda, Duration
  covers the post-runtime phase too: `Duration - Post-Runtime` is the response path);
* a slow backend loses nothing: what a flush could not send in its budget leaves with a later
  flush; what is still queued at shutdown leaves with the SIGTERM flush;
* a dead or hung backend never holds a response back; spans beyond the queue bound are
  dropped and counted (`telemetry_spans_dropped_total`), never more than the bound is kept.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cramjam
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from local.template import load_template
from local.workers import Limits, ProcessRuntime
from payments.observability.remote_write_pb import messages
from tests.e2e.otlp_receiver import flatten

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "telemetry_function"
LAYER = ROOT / "layers" / "common"
SLOW_S = 0.6  # the slow backend's extra latency per request
BUDGET_MS = 100  # OBSERVABILITY_FLUSH_TIMEOUT_MS in these tests
SPANS_PER_INVOCATION = 2  # the invocation's span (instrument) + "probe work"
PAYMENTS = "payment_gateway_payment_total"
DROPPED = "payment_gateway_telemetry_spans_dropped_total"
REPORT = re.compile(
    r"REPORT RequestId: (?P<id>\S+)\tDuration: (?P<duration>[\d.]+) ms.*?"
    r"Post-Runtime Extensions Duration: (?P<post>[\d.]+) ms"
)


# --------------------------------------------------------------------------- receivers


@dataclass
class Received:
    at: float  # time.monotonic() when the receiver acknowledged it
    spans: list[dict[str, Any]] = field(default_factory=list)
    series: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


class Receiver:
    """OTLP/HTTP (`/v1/traces`) and remote write (`/api/v1/write`) on one loopback port.

    `delay_s`: every answer that much late; `hold`: no answer until `release()`. What a
    request carried counts as received when it is acknowledged (2xx sent)."""

    def __init__(self, delay_s: float = 0.0, hold: bool = False) -> None:
        self.delay_s = delay_s
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.started: list[float] = []  # time.monotonic() when each request arrived
        self.received: list[Received] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:
                with receiver._cond:
                    receiver.started.append(time.monotonic())
                    receiver._cond.notify_all()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                receiver.released.wait()
                entry = receiver._decode(self.path, self.headers.get("Content-Encoding"), body)
                status = 200 if self.path.startswith("/v1/traces") else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.wfile.flush()
                with receiver._cond:
                    entry.at = time.monotonic()
                    receiver.received.append(entry)
                    receiver._cond.notify_all()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @staticmethod
    def _decode(path: str, encoding: str | None, body: bytes) -> Received:
        if path.startswith("/v1/traces"):
            if (encoding or "").lower() == "gzip":
                import gzip

                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            return Received(0.0, spans=flatten(request))
        write = messages().write_request()
        write.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
        series = {}
        for ts in write.timeseries:
            labels = tuple(sorted((lb.name, lb.value) for lb in ts.labels))
            series[labels] = max(ts.samples, key=lambda s: s.timestamp).value
        return Received(0.0, series=series)

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    # --- what arrived ---------------------------------------------------------------------

    def wait(self, predicate: Callable[[Receiver], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def spans(self) -> list[dict[str, Any]]:
        with self._cond:
            return [span for entry in self.received for span in entry.spans]

    def acked_at(self, trace_id: str) -> float | None:
        """When the first span of `trace_id` was acknowledged."""
        with self._cond:
            for entry in self.received:
                if any(span["trace_id"] == trace_id for span in entry.spans):
                    return entry.at
        return None

    def latest(self, name: str) -> float | None:
        """The value of the newest remote write of the metric `name` (summed over series)."""
        with self._cond:
            for entry in reversed(self.received):
                values = [v for labels, v in entry.series.items() if ("__name__", name) in labels]
                if values:
                    return sum(values)
        return None


def closed_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# --------------------------------------------------------------------------- the runtime


@dataclass
class Function:
    runtime: ProcessRuntime
    capfd: pytest.CaptureFixture[str]
    stderr: list[str] = field(default_factory=list)

    def invoke(self, seq: int = 0) -> tuple[dict[str, Any], float]:
        """One invocation: its result and the time.monotonic() at which the caller had it."""
        result, error = self.runtime.invoke("ProbeFunction", {"seq": seq})
        answered = time.monotonic()
        assert error is None, error
        assert result["extension"], "the layer's extension must be running"
        return result, answered

    def reports(self, *results: dict[str, Any]) -> dict[str, tuple[float, float]]:
        """REPORT lines: request id -> (Duration, Post-Runtime Extensions Duration), once
        those of `results` are written (at the end of their post-runtime phase)."""
        wanted = {r["request_id"] for r in results}
        deadline = time.monotonic() + 20
        while True:
            self.stderr.extend(self.capfd.readouterr().err.splitlines())
            out = {}
            for line in self.stderr:
                match = REPORT.search(line)
                if match:
                    out[match["id"]] = (float(match["duration"]), float(match["post"]))
            if wanted <= set(out) or time.monotonic() > deadline:
                return out
            time.sleep(0.05)

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture
def start(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Function]]:
    started: list[Function] = []

    def run(otlp: str, rw: str, **env: str) -> Function:
        (tmp_path / "template.yaml").write_text(f"""\
Resources:
  Common:
    Type: AWS::Serverless::LayerVersion
    Properties: {{ContentUri: {LAYER}}}
  ProbeFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: {FIXTURE}
      Handler: app.handler
      Timeout: 10
""")
        overrides = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
            "OTEL_TRACES_SAMPLER": "always_on",
            "TRACES_EXPORTER_FILE": "",
            "TRACES_EXPORTER_XRAY": "",
            "PROMETHEUS_REMOTE_WRITE_URL": rw + "/api/v1/write",
            "PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS": "0",
            "PROMETHEUS_INSTANCE_SLOTS": "0",
            "EMF_OUTPUT_FILE": str(tmp_path / "emf.jsonl"),
            "OBSERVABILITY_FLUSH_TIMEOUT_MS": str(BUDGET_MS),
            "OBSERVABILITY_EXTENSION": "auto",
            **env,
        }
        runtime = ProcessRuntime(
            load_template(tmp_path / "template.yaml"),
            overrides,
            prewarm=False,
            limits=Limits(max_environments=1, idle_timeout_s=0),
        )
        function = Function(runtime, capfd)
        started.append(function)
        return function

    try:
        yield run
    finally:
        for function in started:
            function.close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for receiver in made:
            receiver.stop()


def emf_total(path: Path, metric: str) -> float:
    """Sum of `metric` over every EMF document written (each carries a delta)."""
    if not path.exists():
        return 0.0
    total = 0.0
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        if isinstance(doc.get(metric), int | float):
            total += doc[metric]
        elif isinstance(doc.get(metric), list):
            total += sum(doc[metric])
    return total


def trace_ids(spans: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for span in spans:
        counts[span["trace_id"]] = counts.get(span["trace_id"], 0) + 1
    return counts


def test_fast_backends_get_everything_and_the_shutdown_flush_sends_the_rest(
    start: Callable[..., Function], receivers: Callable[..., Receiver]
) -> None:
    rx = receivers()
    # Lambda's default remote-write interval (5 s): writes are rarer than flushes.
    fn = start(rx.url, rx.url, PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS="5")
    first, _ = fn.invoke(0)
    assert rx.wait(lambda r: r.latest(PAYMENTS) == 1.0 and len(r.spans()) == 2)
    names = {span["name"] for span in rx.spans()}
    assert names == {"telemetry-probe", "probe work"}
    # Two more within the remote-write interval: their counts have no later write to go
    # with but the SIGTERM flush at shutdown; their spans at most wait in the queue for it.
    results = [first] + [fn.invoke(seq)[0] for seq in (1, 2)]
    reports = fn.reports(*results)
    fn.close()
    assert trace_ids(rx.spans()) == {r["trace_id"]: SPANS_PER_INVOCATION for r in results}
    assert rx.latest(PAYMENTS) == 3.0
    assert not rx.latest(DROPPED)
    assert {r["request_id"] for r in results} <= set(reports)
    assert all(post < BUDGET_MS + 1000 for _, post in reports.values())


def test_a_slow_backend_is_waited_for_after_the_response_never_before(
    start: Callable[..., Function], receivers: Callable[..., Receiver]
) -> None:
    rx = receivers(delay_s=SLOW_S)
    # A flush budget longer than the backend's latency: the flush waits for the export.
    fn = start(rx.url, rx.url, OBSERVABILITY_FLUSH_TIMEOUT_MS="3000")
    for seq in range(2):  # cold, then warm (sporadic: both flush)
        result, answered = fn.invoke(seq)
        trace_id = result["trace_id"]
        assert rx.wait(lambda r, t=trace_id: r.acked_at(t) is not None)
        acked = rx.acked_at(trace_id)
        assert acked is not None and answered < acked  # the caller had it first
        # The export is in the post-runtime phase (it waited the backend's 600 ms), the
        # response path (Duration minus it) is not.
        duration, post = fn.reports(result)[result["request_id"]]
        assert post >= SLOW_S * 1000 / 2
        assert duration - post < SLOW_S * 1000 / 2
        time.sleep(1.1)  # > OBSERVABILITY_FLUSH_INTERVAL_MS: sporadic traffic


def test_a_slow_backend_costs_at_most_the_budget_and_loses_nothing(
    start: Callable[..., Function], receivers: Callable[..., Receiver]
) -> None:
    rx = receivers(delay_s=SLOW_S)
    fn = start(rx.url, rx.url)  # flush budget 100 ms < the backend's 600 ms
    first, _ = fn.invoke(0)
    _, post = fn.reports(first)[first["request_id"]]
    assert BUDGET_MS / 2 <= post < SLOW_S * 1000  # waited up to the budget, not for the answer
    # Busy traffic (flushes at most once per interval), then one after a pause: what
    # earlier flushes could not send within their budget leaves with a later one.
    results = [first] + [fn.invoke(seq)[0] for seq in range(1, 6)]
    time.sleep(1.2)  # > OBSERVABILITY_FLUSH_INTERVAL_MS: the next invocation flushes
    results.append(fn.invoke(6)[0])
    expected = {r["trace_id"]: SPANS_PER_INVOCATION for r in results}
    assert rx.wait(lambda r: trace_ids(r.spans()) == expected and r.latest(PAYMENTS) == 7.0)
    assert all(r["dropped"] == 0 for r in results)
    reports = fn.reports(*results)
    for result in results:  # no invocation's post-runtime phase waited for a 600 ms answer
        assert reports[result["request_id"]][1] < SLOW_S * 1000


def test_a_dead_backend_never_delays_responses_and_drops_are_bounded_and_counted(
    start: Callable[..., Function], tmp_path: Path
) -> None:
    dead = closed_port()
    capacity = 5
    fn = start(dead, dead, OBSERVABILITY_SPAN_QUEUE_SIZE=str(capacity))
    results = [fn.invoke(seq)[0] for seq in range(8)]
    reports = fn.reports(*results)
    fn.close()  # the SIGTERM flush counts the last drops
    for n, result in enumerate(results):
        ended = SPANS_PER_INVOCATION * n + 1  # the earlier invocations' and "probe work"
        assert result["exported"] == 0
        assert result["queued"] <= capacity
        assert result["queued"] + result["dropped"] <= ended
        # Whatever is neither queued nor in the one batch an export holds was dropped.
        assert result["dropped"] >= ended - 2 * capacity
        assert reports[result["request_id"]][1] < BUDGET_MS + 1000  # bounded post-runtime
    assert results[-1]["dropped"] >= 1
    # Every drop an invocation saw was counted by a later flush (EMF: the deltas).
    counted = emf_total(tmp_path / "emf.jsonl", "telemetry_spans_dropped_total")
    assert results[-1]["dropped"] <= counted <= SPANS_PER_INVOCATION * len(results)


def test_a_hung_backend_never_delays_responses_and_recovers_with_drops_counted(
    start: Callable[..., Function], receivers: Callable[..., Receiver]
) -> None:
    rx = receivers(hold=True)
    capacity = 5
    fn = start(rx.url, rx.url, OBSERVABILITY_SPAN_QUEUE_SIZE=str(capacity))
    results = [fn.invoke(0)[0]]
    assert rx.wait(lambda r: len(r.started) >= 2)  # both exports stuck on the backend
    results += [fn.invoke(seq)[0] for seq in range(1, 8)]
    assert not rx.received  # every answer came while the backend held every export
    reports = fn.reports(*results)
    for result in results:
        assert result["queued"] <= capacity
        assert reports[result["request_id"]][1] < BUDGET_MS + 1000
    assert results[-1]["dropped"] >= 1
    rx.release()  # the backend recovers: what was kept leaves, drops are reported
    time.sleep(1.2)  # > OBSERVABILITY_FLUSH_INTERVAL_MS: the next invocation flushes
    results.append(fn.invoke(8)[0])
    ended = SPANS_PER_INVOCATION * len(results)

    def accounted(r: Receiver) -> bool:
        return len(r.spans()) + (r.latest(DROPPED) or 0) == ended and (
            r.latest(PAYMENTS) == len(results)
        )

    assert rx.wait(accounted), (len(rx.spans()), rx.latest(DROPPED), rx.latest(PAYMENTS))
    spans = rx.spans()
    assert len({span["span_id"] for span in spans}) == len(spans)  # nothing sent twice
    assert (rx.latest(DROPPED) or 0) >= results[-2]["dropped"] >= 1
