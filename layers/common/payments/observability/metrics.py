"""Metric declarations and the recording API; exported to CloudWatch (EMF) and Prometheus.

    PAYMENT_TOTAL.inc(status="success", channel="stripe", currency="USD")
    PAYMENT_AMOUNT.observe(19.99, currency="USD", channel="stripe")
    flush()  # end of every invocation; never raises, bounded by METRICS_FLUSH_TIMEOUT_MS

Recording only updates in-memory state under a lock. `flush()` prints the values recorded
since the previous flush as EMF (CloudWatch aggregates them) and, when
PROMETHEUS_REMOTE_WRITE_URL is set, remote-writes the cumulative state of this execution
environment (see `remote_write` for the `instance` label and the series-churn trade-off).

PromQL: histograms have no bare series; the mean amount is
    sum by (channel, currency) (rate(payment_gateway_payment_amount_sum[5m]))
      / sum by (channel, currency) (rate(payment_gateway_payment_amount_count[5m]))

Environment: METRICS_NAMESPACE (EMF namespace, default PaymentGateway),
METRICS_FLUSH_TIMEOUT_MS (default 200), PROMETHEUS_REMOTE_WRITE_URL,
PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS (least time between remote writes, default 5),
PROMETHEUS_REMOTE_WRITE_SIGV4 (true/false; default: on for aps-workspaces hosts),
PROMETHEUS_REMOTE_WRITE_REGION (else AWS_REGION).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from payments.observability import emf

if TYPE_CHECKING:
    # requests, cramjam and protobuf load only when remote write is configured (cold start).
    from payments.observability import remote_write

PREFIX = "payment_gateway_"
DEFAULT_NAMESPACE = "PaymentGateway"
DEFAULT_FLUSH_TIMEOUT_MS = 200
DEFAULT_REMOTE_WRITE_INTERVAL_S = 5.0
# Random per execution environment: concurrent Lambdas must never write the same series.
INSTANCE_ID = uuid.uuid4().hex[:16]

# Prometheus' default latency buckets plus 3 s, the p99 latency SLO threshold.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 10.0)
BYTES_BUCKETS = tuple(float(64 * 4**i) for i in range(8))  # 64 B ... 1 MiB
AMOUNT_BUCKETS = (1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0, 100000.0)

_EMF_UNITS = {"seconds": "Seconds", "bytes": "Bytes"}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = frozenset({"job", "instance", "le", "service"})

_log = logging.getLogger(__name__)
_LOCK = threading.RLock()
_REGISTRY: list[_Metric] = []

# Failed remote writes (backend down, slow, 4xx, 5xx) since process start; read by tests/ops.
remote_write_failures = 0


class _State:
    """Mutable module state, guarded by _LOCK."""

    def __init__(self) -> None:
        self.service = os.environ.get("POWERTOOLS_SERVICE_NAME") or "payment-gateway"
        self.function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or "local"
        self.last_timestamp_ms = 0
        self.generation = 0  # bumped on every recording: skip remote write if nothing changed
        self.delivered_generation = 0
        self.inflight: threading.Thread | None = None
        self.writer: remote_write.Writer | None = None
        self.last_write_started = -math.inf  # time.monotonic() of the last remote write


_state = _State()

Key = tuple[str, ...]
LabelValue = str | int


@dataclass(frozen=True)
class HistogramSnapshot:
    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count), ending at +Inf
    sum: float
    count: int


class _Metric:
    kind: ClassVar[str]

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        unit: str = "",
    ) -> None:
        for label in labels:
            if not _LABEL_NAME.match(label) or label.startswith("__") or label in _RESERVED_LABELS:
                raise ValueError(f"{name}: invalid label name {label!r}")
        self.name = name
        self.help = help
        self.labels = labels
        self.unit = unit
        self._announced: set[Key] = set()  # series delivered once: no leading 0 sample needed
        _REGISTRY.append(self)

    @property
    def prometheus_name(self) -> str:
        return PREFIX + self.name

    def _key(self, labels: dict[str, LabelValue]) -> Key:
        if labels.keys() != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.labels)

    def _reset(self) -> None:
        self._announced.clear()


class Counter(_Metric):
    kind = "counter"

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        unit: str = "",
    ) -> None:
        super().__init__(name, help, labels, unit)
        self._totals: dict[Key, float] = {}
        self._pending: dict[Key, float] = {}

    def inc(self, value: float = 1.0, **labels: LabelValue) -> None:
        key = self._key(labels)
        if value < 0:
            raise ValueError(f"{self.name}: counters only go up, got {value}")
        if not math.isfinite(value):
            return  # a NaN/inf would poison the cumulative total forever; drop it
        with _LOCK:
            self._totals[key] = self._totals.get(key, 0.0) + value
            self._pending[key] = self._pending.get(key, 0.0) + value
            _state.generation += 1

    def _reset(self) -> None:
        super()._reset()
        self._totals.clear()
        self._pending.clear()


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        unit: str,
        buckets: tuple[float, ...],
    ) -> None:
        super().__init__(name, help, labels, unit)
        if not buckets or list(buckets) != sorted(set(buckets)) or math.isinf(buckets[-1]):
            raise ValueError(f"{name}: buckets must be finite, increasing and unique")
        self.buckets = buckets
        # Per series: per-bucket (non-cumulative) counts with a final +Inf slot, sum, count.
        self._counts: dict[Key, list[int]] = {}
        self._sums: dict[Key, float] = {}
        self._pending: dict[Key, list[float]] = {}

    def observe(self, value: float, **labels: LabelValue) -> None:
        key = self._key(labels)
        if not math.isfinite(value):
            return  # JSON (EMF) cannot carry it and it would poison _sum; drop it
        with _LOCK:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.buckets) + 1)
            # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
            counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._pending.setdefault(key, []).append(value)
            _state.generation += 1

    def _snapshot(self, key: Key) -> HistogramSnapshot:
        cumulative, running = [], 0
        for bound, n in zip((*self.buckets, math.inf), self._counts[key], strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramSnapshot(tuple(cumulative), self._sums[key], running)

    def _reset(self) -> None:
        super()._reset()
        self._counts.clear()
        self._sums.clear()
        self._pending.clear()


class Gauge(_Metric):
    """A value that goes up and down (a backlog, an age). `set` replaces it."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        unit: str = "",
    ) -> None:
        super().__init__(name, help, labels, unit)
        self._values: dict[Key, float] = {}
        self._pending: dict[Key, float] = {}

    def set(self, value: float, **labels: LabelValue) -> None:
        key = self._key(labels)
        if not math.isfinite(value):
            return
        with _LOCK:
            self._values[key] = value
            self._pending[key] = value
            _state.generation += 1

    def _reset(self) -> None:
        super()._reset()
        self._values.clear()
        self._pending.clear()


HTTP_REQUESTS_TOTAL = Counter(
    "http_requests_total", "HTTP requests handled.", ("method", "path", "status")
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration.",
    ("method", "path", "status"),
    "seconds",
    SECONDS_BUCKETS,
)
HTTP_REQUEST_SIZE = Histogram(
    "http_request_size_bytes", "HTTP request body size.", ("method", "path"), "bytes", BYTES_BUCKETS
)
HTTP_RESPONSE_SIZE = Histogram(
    "http_response_size_bytes",
    "HTTP response body size.",
    ("method", "path"),
    "bytes",
    BYTES_BUCKETS,
)
PAYMENT_TOTAL = Counter(
    "payment_total", "Payment attempts by outcome.", ("status", "channel", "currency")
)
REFUND_TOTAL = Counter("refund_total", "Refund attempts by outcome.", ("status", "currency"))
PAYMENT_AMOUNT = Histogram(
    "payment_amount",
    "Payment amount in major currency units.",
    ("currency", "channel"),
    "",
    AMOUNT_BUCKETS,
)
PAYMENT_DURATION = Histogram(
    "payment_duration_seconds",
    "Payment operation duration.",
    ("operation", "status"),
    "seconds",
    SECONDS_BUCKETS,
)
REFUND_AMOUNT = Histogram(
    "refund_amount", "Refund amount in major currency units.", ("currency",), "", AMOUNT_BUCKETS
)
COLD_STARTS_TOTAL = Counter(
    "lambda_cold_starts_total", "Lambda execution environments started.", ("function",)
)
RECONCILIATION_TOTAL = Counter(
    "reconciliation_total",
    "Reconciliation attempts of unresolved payments and refunds, by outcome.",
    ("kind", "outcome"),
)
PAYMENTS_UNRESOLVED = Gauge(
    "payments_unresolved",
    "Payments left processing / refunds left pending beyond the grace period.",
    ("kind",),
)
PAYMENTS_UNRESOLVED_OLDEST = Gauge(
    "payments_unresolved_oldest_age_seconds",
    "Age of the oldest unresolved payment or refund (0 when there is none).",
    ("kind",),
    "seconds",
)
WEBHOOK_EVENTS_TOTAL = Counter(
    "webhook_events_total", "Provider webhook events received, by result.", ("type", "result")
)


def configure(function_name: str, service: str) -> None:
    """Set the `function` and `job`/`service` labels (once per execution environment)."""
    with _LOCK:
        _state.function, _state.service = function_name, service


def registry() -> tuple[_Metric, ...]:
    return tuple(_REGISTRY)


def snapshot() -> dict[str, dict[Key, float | HistogramSnapshot]]:
    """Cumulative state by metric name and label values (for tests and debugging)."""
    out: dict[str, dict[Key, float | HistogramSnapshot]] = {}
    with _LOCK:
        for m in _REGISTRY:
            if isinstance(m, Counter):
                out[m.name] = dict(m._totals)
            elif isinstance(m, Histogram):
                out[m.name] = {key: m._snapshot(key) for key in m._counts}
            elif isinstance(m, Gauge):
                out[m.name] = dict(m._values)
    return out


def reset() -> None:
    """Forget all state (tests). Waits briefly for an in-flight remote write to finish."""
    global remote_write_failures  # noqa: PLW0603 - the contract is a module-level int
    if _state.inflight is not None:
        _state.inflight.join(5.0)
    with _LOCK:
        for m in _REGISTRY:
            m._reset()
        remote_write_failures = 0
        _state.writer = None  # fresh Session and credentials
        _state.generation = _state.delivered_generation = _state.last_timestamp_ms = 0
        _state.last_write_started = -math.inf


def _flush_timeout(timeout_seconds: float | None) -> float:
    if timeout_seconds is not None:
        return max(0.0, timeout_seconds)
    try:
        return max(0.0, float(os.environ["METRICS_FLUSH_TIMEOUT_MS"]) / 1000)
    except (KeyError, ValueError):
        return DEFAULT_FLUSH_TIMEOUT_MS / 1000


def _emf_entries() -> list[emf.Entry]:
    """Values recorded since the last flush, then forgotten (caller holds _LOCK)."""
    entries = []
    for m in _REGISTRY:
        pending: dict[Key, float] | dict[Key, list[float]]
        if isinstance(m, Counter | Gauge):
            pending, unit = m._pending, _EMF_UNITS.get(m.unit, "Count")
        elif isinstance(m, Histogram):
            pending, unit = m._pending, _EMF_UNITS.get(m.unit, "None")
        else:  # pragma: no cover - only three kinds exist
            continue
        for key, value in pending.items():
            dims = (("service", _state.service), *zip(m.labels, key, strict=True))
            values = value if isinstance(value, list) else [value]
            entries.append(emf.Entry(m.name, unit, dims, values))
        pending.clear()
    return entries


def _samples(m: _Metric, key: Key, value: float, ts: int) -> tuple[tuple[float, int], ...]:
    # A series new to this environment starts at 0 one millisecond earlier, so that
    # rate()/increase() see its first increment instead of taking it as the baseline.
    if key in m._announced:
        return ((value, ts),)
    return ((0.0, ts - 1), (value, ts))


def _collect_series(
    ts: int,
) -> tuple[list[remote_write.Series], list[remote_write.Metadata], list[tuple[_Metric, Key]]]:
    """Cumulative state as remote-write series (caller holds _LOCK)."""
    from payments.observability import remote_write
    from payments.observability.remote_write_pb import (
        METRIC_TYPE_COUNTER,
        METRIC_TYPE_GAUGE,
        METRIC_TYPE_HISTOGRAM,
    )

    series: list[remote_write.Series] = []
    metadata: list[remote_write.Metadata] = []
    keys: list[tuple[_Metric, Key]] = []
    common = {"job": _state.service, "function": _state.function, "instance": INSTANCE_ID}
    for m in _REGISTRY:
        if isinstance(m, Counter):
            state: dict[Key, float] | dict[Key, list[int]] = m._totals
            mtype = METRIC_TYPE_COUNTER
        elif isinstance(m, Gauge):
            state, mtype = m._values, METRIC_TYPE_GAUGE
        elif isinstance(m, Histogram):
            state, mtype = m._counts, METRIC_TYPE_HISTOGRAM
        else:  # pragma: no cover - only three kinds exist
            continue
        if not state:
            continue
        metadata.append(remote_write.Metadata(m.prometheus_name, mtype, m.help, m.unit))
        for key in state:
            keys.append((m, key))
            # The metric's own labels win over the common ones (cold starts carry `function`).
            own = dict(zip(m.labels, key, strict=True))
            if isinstance(m, Counter):
                labels = remote_write.label_set(common, own, {"__name__": m.prometheus_name})
                series.append(remote_write.Series(labels, _samples(m, key, m._totals[key], ts)))
                continue
            if isinstance(m, Gauge):  # a gauge needs no leading 0: its value is the sample
                labels = remote_write.label_set(common, own, {"__name__": m.prometheus_name})
                series.append(remote_write.Series(labels, ((m._values[key], ts),)))
                continue
            assert isinstance(m, Histogram)
            snap = m._snapshot(key)
            name = m.prometheus_name
            for bound, cumulative in snap.buckets:
                le = {"__name__": name + "_bucket", "le": remote_write.format_le(bound)}
                labels = remote_write.label_set(common, own, le)
                series.append(remote_write.Series(labels, _samples(m, key, cumulative, ts)))
            for suffix, value in (("_sum", snap.sum), ("_count", float(snap.count))):
                labels = remote_write.label_set(common, own, {"__name__": name + suffix})
                series.append(remote_write.Series(labels, _samples(m, key, value, ts)))
    return series, metadata, keys


def _fail(url: str, detail: str, attempts: int) -> None:
    global remote_write_failures  # noqa: PLW0603 - the contract is a module-level int
    with _LOCK:
        remote_write_failures += 1
    # Host only: the URL may carry credentials or tokens in userinfo or the query string.
    host = urlsplit(url).hostname or "?"
    _log.warning(
        "metrics remote write failed host=%s attempts=%d detail=%s", host, attempts, detail
    )


def _remote_write(url: str, deadline: float) -> None:
    """Send the cumulative state in a worker thread; wait for it at most until `deadline`.

    The thread gives a hard bound (DNS, connect and slow reads included) that per-request
    timeouts alone cannot. At most one write is in flight: a later flush skips while one
    is still running, and the next successful write carries the cumulative state anyway.
    """
    from payments.observability import remote_write

    outcome: list[remote_write.Outcome] = []
    with _LOCK:
        if _state.inflight is not None and _state.inflight.is_alive():
            busy = True
        else:
            busy = False
            generation = _state.generation
            if generation == _state.delivered_generation:
                return  # nothing new since the last delivered write
            # Strictly increasing, 2 ms apart: a leading 0 sample (ts - 1) never collides
            # with a sample this environment already sent.
            ts = max(int(time.time() * 1000), _state.last_timestamp_ms + 2)
            _state.last_timestamp_ms = ts
            series, metadata, keys = _collect_series(ts)
            if _state.writer is None:
                _state.writer = remote_write.Writer()
            writer = _state.writer

            def run() -> None:
                try:
                    result = writer.send(url, remote_write.encode(series, metadata), deadline)
                except Exception as exc:  # never let a thread die with a traceback on stderr
                    result = remote_write.Outcome(False, 0, type(exc).__name__)
                if result.ok:
                    with _LOCK:
                        for m, key in keys:
                            m._announced.add(key)
                        _state.delivered_generation = max(_state.delivered_generation, generation)
                outcome.append(result)

            thread = _state.inflight = threading.Thread(
                target=run, name="metrics-remote-write", daemon=True
            )
            thread.start()
    if busy:
        _fail(url, "previous write still in flight", 0)
        return
    thread.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        _fail(url, "timeout", 0)
    elif not outcome[0].ok:
        _fail(url, outcome[0].detail, outcome[0].attempts)


def _remote_write_due() -> bool:
    """At most one remote write per PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS (default 5).

    State is cumulative, so a skipped flush loses nothing: the next write carries it. Writing
    on every invocation would put an HTTP round trip on every response for data Prometheus
    evaluates every 15-60 s. The cost: the last interval of an execution environment that is
    never invoked again is not delivered.
    """
    raw = os.environ.get("PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS", "").strip()
    try:
        interval = float(raw) if raw else DEFAULT_REMOTE_WRITE_INTERVAL_S
    except ValueError:
        interval = DEFAULT_REMOTE_WRITE_INTERVAL_S
    now = time.monotonic()
    with _LOCK:
        if now - _state.last_write_started < interval:
            return False
        _state.last_write_started = now
    return True


def flush(timeout_seconds: float | None = None) -> None:
    """Export what was recorded: EMF deltas to stdout, cumulative state to Prometheus.

    Never raises and returns within the timeout (METRICS_FLUSH_TIMEOUT_MS, default 200 ms).
    """
    deadline = time.monotonic() + _flush_timeout(timeout_seconds)
    try:
        namespace = os.environ.get("METRICS_NAMESPACE") or DEFAULT_NAMESPACE
        with _LOCK:
            entries = _emf_entries()
        emf.write(emf.build(namespace, entries, int(time.time() * 1000)))
    except Exception:
        _log.warning("metrics EMF flush failed", exc_info=True)
    url = os.environ.get("PROMETHEUS_REMOTE_WRITE_URL", "").strip()
    if not url or not _remote_write_due():
        return
    try:
        _remote_write(url, deadline)
    except Exception as exc:
        _fail(url, type(exc).__name__, 0)
