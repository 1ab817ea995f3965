"""Prometheus remote write: decode what is sent to a loopback receiver."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cramjam
import pytest

from payments import observability
from payments.observability import metrics, remote_write
from payments.observability.remote_write_pb import messages
from payments.observability.settings import ObservabilitySettings


@dataclass
class Receiver:
    url: str
    script: list[int | str] = field(default_factory=list)  # status codes, or "hang"
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def write_requests(self) -> list[Any]:
        out = []
        for _, body in self.requests:
            req = messages().write_request()
            req.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
            out.append(req)
        return out


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    rec = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.requests.append((dict(self.headers.items()), body))
            action = rec.script.pop(0) if rec.script else 204
            if action == "hang":
                rec.release.wait(5)
                action = 204
            self.send_response(int(action))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/api/v1/write"
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_URL", rec.url)
    yield rec
    rec.release.set()
    metrics.reset()  # waits for an in-flight write before the server goes away
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "PROMETHEUS_REMOTE_WRITE_URL",
        "PROMETHEUS_REMOTE_WRITE_SIGV4",
        "PROMETHEUS_REMOTE_WRITE_REGION",
        "METRICS_FLUSH_TIMEOUT_MS",
        # The template turns leased slots on; the in-process runtime of earlier tests may
        # have left its environment behind. Slots have their own tests.
        "PROMETHEUS_INSTANCE_SLOTS",
    ):
        monkeypatch.delenv(var, raising=False)
    # Most tests look at every write; the interval itself is tested on its own.
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS", "0")
    metrics.reset()
    metrics.configure("fn-test", "svc-test")


def series_by_name(req: Any) -> dict[tuple[tuple[str, str], ...], list[tuple[float, int]]]:
    return {
        tuple((lb.name, lb.value) for lb in ts.labels): [(s.value, s.timestamp) for s in ts.samples]
        for ts in req.timeseries
    }


def find(req: Any, name: str, **labels: str) -> list[tuple[float, int]]:
    for key, samples in series_by_name(req).items():
        d = dict(key)
        if d["__name__"] == name and all(d.get(k) == v for k, v in labels.items()):
            return samples
    raise AssertionError(f"no series {name} {labels}")


def test_headers_labels_and_counter_zero_sample(receiver, capsys):
    metrics.PAYMENT_TOTAL.inc(status="success", channel="stripe", currency="USD")
    metrics.flush(2.0)
    assert len(receiver.requests) == 1
    headers = receiver.requests[0][0]
    assert headers["Content-Encoding"] == "snappy"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert headers["User-Agent"].startswith("payment-gateway-metrics/")
    assert "Authorization" not in headers
    (req,) = receiver.write_requests()
    for ts in req.timeseries:
        names = [lb.name for lb in ts.labels]
        assert names == sorted(names) and len(names) == len(set(names))
        assert all(lb.value for lb in ts.labels)
    ((key, samples),) = series_by_name(req).items()
    assert dict(key) == {
        "__name__": "payment_gateway_payment_total",
        "channel": "stripe",
        "currency": "USD",
        "status": "success",
        "job": "svc-test",
        "function": "fn-test",
        "instance": metrics.INSTANCE_ID,
    }
    # New series: a 0 sample just before the first increment.
    (zero, zero_ts), (one, ts) = samples
    assert (zero, one) == (0.0, 1.0) and zero_ts == ts - 1
    assert abs(ts - time.time() * 1000) < 60_000
    md = {m.metric_family_name: m for m in req.metadata}
    assert md["payment_gateway_payment_total"].type == 1  # COUNTER

    # Second flush: cumulative value, no second zero.
    metrics.PAYMENT_TOTAL.inc(2, status="success", channel="stripe", currency="USD")
    metrics.PAYMENT_TOTAL.inc(status="failed", channel="stripe", currency="USD")
    metrics.flush(2.0)
    second = receiver.write_requests()[1]
    ((value, ts2),) = find(second, "payment_gateway_payment_total", status="success")
    assert value == 3.0 and ts2 > ts
    assert [v for v, _ in find(second, "payment_gateway_payment_total", status="failed")] == [0, 1]


def test_histogram_series_are_cumulative(receiver, capsys):
    values = [0.003, 0.005, 0.2, 0.2, 4.0, 30.0]
    for v in values:
        metrics.PAYMENT_DURATION.observe(v, operation="create", status="success")
    metrics.flush(2.0)
    (req,) = receiver.write_requests()
    name = "payment_gateway_payment_duration_seconds"
    buckets: dict[str, list[tuple[float, int]]] = {}
    for key, samples in series_by_name(req).items():
        d = dict(key)
        assert d["operation"] == "create" and d["status"] == "success"
        if d["__name__"] == name + "_bucket":
            buckets[d["le"]] = samples
            assert samples[0][0] == 0.0  # new series start at zero
    assert "0.005" in buckets and "+Inf" in buckets and "1" in buckets and "2.5" in buckets
    latest = {le: s[-1][0] for le, s in buckets.items()}
    ordered = sorted(latest.items(), key=lambda kv: float(kv[0]))
    counts = [c for _, c in ordered]
    assert counts == sorted(counts)  # monotone in le
    assert latest["0.005"] == 2 and latest["0.25"] == 4 and latest["5"] == 5
    assert latest["+Inf"] == len(values) == find(req, name + "_count")[-1][0]
    assert find(req, name + "_sum")[-1][0] == pytest.approx(sum(values))

    metrics.PAYMENT_DURATION.observe(0.001, operation="create", status="success")
    metrics.flush(2.0)
    second = receiver.write_requests()[1]
    assert find(second, name + "_bucket", le="0.005") == [
        (3.0, find(second, name + "_count")[0][1])
    ]
    assert find(second, name + "_count")[0][0] == len(values) + 1
    assert find(second, name + "_sum")[0][0] == pytest.approx(sum(values) + 0.001)


def test_wire_format_field_numbers(receiver, capsys):
    """Decode the raw protobuf by hand: field numbers must match prometheus/prompb."""
    metrics.REFUND_TOTAL.inc(status="success", currency="JPY")
    metrics.flush(2.0)
    raw = bytes(cramjam.snappy.decompress_raw(receiver.requests[0][1]))

    def fields(buf: bytes) -> list[tuple[int, int, Any]]:
        out, i = [], 0
        while i < len(buf):
            tag, i = varint(buf, i)
            num, wt = tag >> 3, tag & 7
            if wt == 0:
                val, i = varint(buf, i)
            elif wt == 1:
                val, i = buf[i : i + 8], i + 8
            elif wt == 2:
                n, i = varint(buf, i)
                val, i = buf[i : i + n], i + n
            else:
                raise AssertionError(f"wire type {wt}")
            out.append((num, wt, val))
        return out

    def varint(buf: bytes, i: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result, i

    top = fields(raw)
    assert {num for num, _, _ in top} == {1, 3}  # timeseries, metadata
    ts = fields(next(v for num, _, v in top if num == 1))
    names = [
        dict((n, v) for n, _, v in fields(lb))[2]
        for num, _, lb in ts
        if num == 1 and dict((n, v) for n, _, v in fields(lb))[1] == b"__name__"
    ]
    assert names == [b"payment_gateway_refund_total"]  # Label{name=1, value=2}
    samples = [fields(v) for num, _, v in ts if num == 2]
    assert [[(n, wt) for n, wt, _ in s] for s in samples][-1] == [(1, 1), (2, 0)]  # double, int64


def test_retries_5xx_and_429_then_delivers(receiver, capsys):
    receiver.script = [500, 429, 200]
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    metrics.flush(3.0)
    assert len(receiver.requests) == 3
    assert metrics.remote_write_failures == 0
    reqs = receiver.write_requests()
    assert reqs[0] == reqs[2]  # the same payload is retried


def test_4xx_is_not_retried_and_is_counted(receiver, capsys, caplog, monkeypatch):
    receiver.script = [400]
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    # Attach directly: another logger config (e.g. Powertools on "payments") may stop propagation.
    monkeypatch.setattr(metrics._log, "handlers", [caplog.handler])
    monkeypatch.setattr(metrics._log, "propagate", False)
    metrics.flush(2.0)
    assert len(receiver.requests) == 1
    assert metrics.remote_write_failures == 1
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "400" in warnings[0].getMessage()
    assert "/api/v1/write" not in warnings[0].getMessage()

    # The series was never delivered: the next write still starts it at zero.
    metrics.flush(2.0)
    assert len(receiver.requests) == 2
    samples = find(receiver.write_requests()[1], "payment_gateway_payment_total")
    assert [v for v, _ in samples] == [0.0, 1.0]
    assert metrics.remote_write_failures == 1


def test_hanging_receiver_bounded_by_timeout(receiver, capsys):
    receiver.script = ["hang"]
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    start = time.monotonic()
    metrics.flush(0.2)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0  # loose correctness bound, not a benchmark
    assert metrics.remote_write_failures == 1


def test_flush_skips_while_a_write_is_still_in_flight(receiver, capsys):
    receiver.script = ["hang"]
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    metrics.flush(0.2)
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    start = time.monotonic()
    metrics.flush(5.0)  # a long budget: waiting on the stuck write would show under any load
    assert time.monotonic() - start < 2.5  # did not wait or send
    assert len(receiver.requests) == 1
    assert metrics.remote_write_failures == 2


def test_default_timeout_from_env(receiver, capsys, monkeypatch):
    monkeypatch.setenv("METRICS_FLUSH_TIMEOUT_MS", "150")
    receiver.script = ["hang"]
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    start = time.monotonic()
    metrics.flush()
    assert time.monotonic() - start < 1.0
    assert metrics.remote_write_failures == 1


def test_receiver_down_is_counted_not_raised(monkeypatch, capsys, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_URL", f"http://127.0.0.1:{port}/api/v1/write")
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    metrics.flush(5.0)
    assert metrics.remote_write_failures == 1
    # Refused: one attempt, not retries for the whole budget on every invocation.
    assert "attempts=1 detail=ConnectionError" in caplog.text


def test_nothing_new_means_no_request(receiver, capsys):
    metrics.flush(1.0)
    assert receiver.requests == []
    metrics.COLD_STARTS_TOTAL.inc(function="fn-other")
    metrics.flush(1.0)
    metrics.flush(1.0)
    assert len(receiver.requests) == 1
    (key,) = series_by_name(receiver.write_requests()[0])
    # The metric's own `function` label wins over the environment's.
    assert dict(key)["function"] == "fn-other" and dict(key)["job"] == "svc-test"


def test_no_url_no_remote_write(capsys):
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    metrics.flush(5.0)
    assert metrics.remote_write_failures == 0
    assert "payment_total" in capsys.readouterr().out


def test_sigv4_signing(receiver, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_SIGV4", "true")
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-example")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    metrics.flush(3.0)
    headers = receiver.requests[0][0]
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/aps/aws4_request" in auth and "Signature=" in auth
    assert headers["X-Amz-Security-Token"] == "token-example"
    assert headers["Content-Encoding"] == "snappy"
    assert metrics.remote_write_failures == 0


def test_sigv4_detection():
    amp = "https://aps-workspaces.us-west-2.amazonaws.com/workspaces/ws-1/api/v1/remote_write"

    def region(url: str, **env: str) -> str | None:
        return remote_write._sigv4_region(url, ObservabilitySettings.from_environ(env))

    assert region(amp) == "us-west-2"
    assert region("http://prometheus:9090/api/v1/write") is None
    assert region(amp, AWS_REGION="ap-northeast-1") == "ap-northeast-1"
    assert region(amp, AWS_REGION="ap-northeast-1", PROMETHEUS_REMOTE_WRITE_SIGV4="false") is None


@pytest.mark.parametrize(
    ("bound", "text"),
    [
        (0.005, "0.005"),
        (1.0, "1"),
        (2.5, "2.5"),
        (100000.0, "100000"),
        (1048576.0, "1.048576e+06"),
        (1e6, "1e+06"),
        (float("inf"), "+Inf"),
        (0.00001, "1e-05"),
    ],
)
def test_le_formatting_matches_prometheus(bound, text):
    assert remote_write.format_le(bound) == text


def test_remote_write_at_most_once_per_interval(receiver, monkeypatch, capsys):
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS", "3600")
    metrics.PAYMENT_TOTAL.inc(status="success", channel="stripe", currency="USD")
    metrics.flush(1.0)
    metrics.PAYMENT_TOTAL.inc(status="success", channel="stripe", currency="USD")
    metrics.flush(1.0)  # within the interval: EMF only, nothing on the wire
    assert len(receiver.requests) == 1
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS", "0")
    observability.container().refresh_settings()  # settings are read once per environment
    metrics.flush(1.0)  # the next write carries the cumulative state: nothing was lost
    assert len(receiver.requests) == 2
    samples = find(receiver.write_requests()[1], "payment_gateway_payment_total", status="success")
    assert samples[-1][0] == 2.0


def test_the_shutdown_flush_writes_within_the_interval(receiver, monkeypatch, capsys):
    """The SIGTERM flush is the environment's last: what was recorded since the last write
    must leave with it, however recent that write was."""
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS", "3600")
    obs = observability.container()
    obs.refresh_settings()
    metrics.PAYMENT_TOTAL.inc(status="success", channel="stripe", currency="USD")
    metrics.flush(1.0)
    metrics.PAYMENT_TOTAL.inc(status="success", channel="stripe", currency="USD")
    obs.flush(2.0)  # an ordinary flush within the interval: nothing on the wire
    assert len(receiver.requests) == 1
    obs.flush(2.0, final=True)
    assert len(receiver.requests) == 2
    samples = find(receiver.write_requests()[1], "payment_gateway_payment_total", status="success")
    assert samples[-1][0] == 2.0


def test_recording_never_waits_for_the_first_import_of_the_remote_write_stack(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold environment's first remote write imports requests, cramjam & co. (hundreds of
    ms on a loaded machine). Recording a metric meanwhile (the handler, or the extension
    noting its post-runtime time before it may call event/next) must not wait for it."""
    import importlib.abc
    import sys

    import payments.observability as package

    importing, release = threading.Event(), threading.Event()

    class SlowImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> None:
            if name == "payments.observability.remote_write":
                importing.set()
                release.wait(10)
            return None  # then the normal finders import it

    monkeypatch.delitem(sys.modules, "payments.observability.remote_write")
    monkeypatch.delattr(package, "remote_write")
    monkeypatch.setattr(sys, "meta_path", [SlowImport(), *sys.meta_path])
    metrics.PAYMENT_TOTAL.inc(status="success", channel="stripe", currency="USD")
    flusher = threading.Thread(target=metrics.flush, args=(10.0,), daemon=True)
    flusher.start()
    try:
        assert importing.wait(5)
        recorder = threading.Thread(
            target=metrics.TELEMETRY_FLUSH_DURATION.observe, args=(0.1,), kwargs={"mode": "x"}
        )
        recorder.start()
        recorder.join(5)
        assert not recorder.is_alive(), "recording waited for the remote-write import"
    finally:
        release.set()
        flusher.join(10)
    assert len(receiver.requests) == 1  # and the write itself still went out
