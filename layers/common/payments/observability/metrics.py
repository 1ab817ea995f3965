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

Settings (`settings.ObservabilitySettings`, read once): METRICS_NAMESPACE (EMF namespace,
default PaymentGateway), METRICS_FLUSH_TIMEOUT_MS (default 200), PROMETHEUS_REMOTE_WRITE_URL,
PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS (least time between remote writes, default 5),
PROMETHEUS_REMOTE_WRITE_SIGV4 (true/false; default: on for aps-workspaces hosts),
PROMETHEUS_REMOTE_WRITE_REGION (else AWS_REGION), PROMETHEUS_INSTANCE_SLOTS (size of the
`instance` slot pool per function, see `series_pool`; 0 = a random id per environment).

`flush()` is called by the export pipeline (after the response on Lambda), never by
business code.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from payments.observability import emf

if TYPE_CHECKING:
    # requests and cramjam load only when remote write is configured (cold start).
    from payments.observability import remote_write
    from payments.observability.settings import ObservabilitySettings

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
        self.service = ""  # "" until configure(): then the settings' defaults
        self.function = ""
        self.last_timestamp_ms = 0
        self.generation = 0  # bumped on every recording: skip remote write if nothing changed
        self.delivered_generation = 0
        self.inflight: threading.Thread | None = None
        self.writer: remote_write.Writer | None = None
        self.last_write_started = -math.inf  # time.monotonic() of the last remote write
        # Instance slot epoch (series_pool): on a new epoch series restart from what was
        # delivered, so a value is never counted in two slots.
        self.epoch = 0
        self.delivered: dict[remote_write.Labels, float] = {}
        self.baseline: dict[remote_write.Labels, float] = {}
        self.announced: set[remote_write.Labels] = set()


_state = _State()


def _settings() -> ObservabilitySettings:
    from payments.observability.container import container

    return container().settings


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
        _REGISTRY.append(self)

    @property
    def prometheus_name(self) -> str:
        return PREFIX + self.name

    def _key(self, labels: dict[str, LabelValue]) -> Key:
        if labels.keys() != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.labels)

    def _reset(self) -> None:
        return None


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


TELEMETRY_FLUSH_DURATION = Histogram(
    "telemetry_flush_duration_seconds",
    "Time spent exporting telemetry per invocation: after the response (extension, Lambda's "
    "post-runtime duration) or before it (inline, outside Lambda).",
    ("mode",),
    "seconds",
    SECONDS_BUCKETS,
)
TELEMETRY_SPANS_DROPPED_TOTAL = Counter(
    "telemetry_spans_dropped_total", "Finished spans dropped because an export queue was full.", ()
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
    from payments.observability.container import container

    container().forget_settings()  # tests change the environment between resets
    with _LOCK:
        for m in _REGISTRY:
            m._reset()
        remote_write_failures = 0
        fresh = _State()
        fresh.service, fresh.function = _state.service, _state.function
        _state.__dict__.update(fresh.__dict__)


def _identity() -> tuple[str, str]:
    settings = _settings()
    return _state.service or settings.service, _state.function or settings.function_name


def _emf_entries() -> list[emf.Entry]:
    """Values recorded since the last flush, then forgotten (caller holds _LOCK)."""
    entries = []
    service = _identity()[0]
    for m in _REGISTRY:
        pending: dict[Key, float] | dict[Key, list[float]]
        if isinstance(m, Counter | Gauge):
            pending, unit = m._pending, _EMF_UNITS.get(m.unit, "Count")
        elif isinstance(m, Histogram):
            pending, unit = m._pending, _EMF_UNITS.get(m.unit, "None")
        else:  # pragma: no cover - only three kinds exist
            continue
        for key, value in pending.items():
            dims = (("service", service), *zip(m.labels, key, strict=True))
            values = value if isinstance(value, list) else [value]
            entries.append(emf.Entry(m.name, unit, dims, values))
        pending.clear()
    return entries


@dataclass(frozen=True)
class _Raw:
    """One series' cumulative value, before the instance label and the epoch baseline."""

    labels: tuple[tuple[str, str], ...]  # sorted, without `instance`
    value: float
    counter: bool  # counters and histogram parts rebase and start at 0; gauges do not


def _raw_series() -> tuple[list[_Raw], list[remote_write.Metadata]]:
    """Cumulative state as series label sets and values (caller holds _LOCK)."""
    from payments.observability import remote_write
    from payments.observability.remote_write_pb import (
        METRIC_TYPE_COUNTER,
        METRIC_TYPE_GAUGE,
        METRIC_TYPE_HISTOGRAM,
    )

    service, function = _identity()
    common = {"job": service, "function": function}
    raw: list[_Raw] = []
    metadata: list[remote_write.Metadata] = []

    def add(own: dict[str, str], extra: dict[str, str], value: float, counter: bool) -> None:
        # The metric's own labels win over the common ones (cold starts carry `function`).
        raw.append(_Raw(remote_write.label_set(common, own, extra), value, counter))

    for m in _REGISTRY:
        if isinstance(m, Counter) and m._totals:
            metadata.append(
                remote_write.Metadata(m.prometheus_name, METRIC_TYPE_COUNTER, m.help, m.unit)
            )
            for key, total in m._totals.items():
                add(
                    dict(zip(m.labels, key, strict=True)),
                    {"__name__": m.prometheus_name},
                    total,
                    True,
                )
        elif isinstance(m, Gauge) and m._values:
            metadata.append(
                remote_write.Metadata(m.prometheus_name, METRIC_TYPE_GAUGE, m.help, m.unit)
            )
            for key, current in m._values.items():
                add(
                    dict(zip(m.labels, key, strict=True)),
                    {"__name__": m.prometheus_name},
                    current,
                    False,
                )
        elif isinstance(m, Histogram) and m._counts:
            metadata.append(
                remote_write.Metadata(m.prometheus_name, METRIC_TYPE_HISTOGRAM, m.help, m.unit)
            )
            for key in m._counts:
                own, snap, name = (
                    dict(zip(m.labels, key, strict=True)),
                    m._snapshot(key),
                    m.prometheus_name,
                )
                for bound, cumulative in snap.buckets:
                    le = {"__name__": name + "_bucket", "le": remote_write.format_le(bound)}
                    add(own, le, float(cumulative), True)
                add(own, {"__name__": name + "_sum"}, snap.sum, True)
                add(own, {"__name__": name + "_count"}, float(snap.count), True)
    return raw, metadata


def _collect_series(
    ts: int, instance: str | None = None
) -> tuple[list[remote_write.Series], list[remote_write.Metadata], list[_Raw]]:
    """Remote-write series for the current epoch (caller holds _LOCK)."""
    raw, metadata = _raw_series()
    return _finish(raw, instance or INSTANCE_ID, ts), metadata, raw


def _finish(raw: list[_Raw], instance: str, ts: int) -> list[remote_write.Series]:
    from payments.observability import remote_write

    series = []
    for r in raw:
        labels = remote_write.with_label(r.labels, "instance", instance)
        if not r.counter:  # a gauge needs no leading 0: its value is the sample
            series.append(remote_write.Series(labels, ((r.value, ts),)))
            continue
        value = r.value - _state.baseline.get(r.labels, 0.0)
        # A series new to this slot starts at 0 one millisecond earlier, so that
        # rate()/increase() see its first increment instead of taking it as the baseline.
        samples = ((value, ts),) if r.labels in _state.announced else ((0.0, ts - 1), (value, ts))
        series.append(remote_write.Series(labels, samples))
    return series


def _delivered(raw: list[_Raw], epoch: int, generation: int) -> None:
    with _LOCK:
        if epoch != _state.epoch:
            return  # the slot changed meanwhile: the next write rebases anyway
        for r in raw:
            if r.counter:
                _state.announced.add(r.labels)
                _state.delivered[r.labels] = r.value
        _state.delivered_generation = max(_state.delivered_generation, generation)


def _fail(url: str, detail: str, attempts: int) -> None:
    global remote_write_failures  # noqa: PLW0603 - the contract is a module-level int
    with _LOCK:
        remote_write_failures += 1
    # Host only: the URL may carry credentials or tokens in userinfo or the query string.
    host = urlsplit(url).hostname or "?"
    _log.warning(
        "metrics remote write failed host=%s attempts=%d detail=%s", host, attempts, detail
    )


def _instance() -> tuple[str, int] | None:
    """This environment's `instance` label and slot epoch (None: the slot pool is full)."""
    settings = _settings()
    if settings.instance_slots <= 0:
        return INSTANCE_ID, 0
    from payments.observability.container import container

    obs = container()
    if obs.instance_slot is None:
        from payments.observability.series_pool import DynamoDbSlotLeases, InstanceSlot

        obs.instance_slot = InstanceSlot(
            DynamoDbSlotLeases(settings.instance_lease_table),
            _identity()[1],
            settings.instance_slots,
            settings.instance_lease_s,
        )
    return obs.instance_slot.current()


def _start_write(
    url: str, deadline: float, outcome: list[remote_write.Outcome]
) -> threading.Thread:
    """The writer thread: slot lease (may call DynamoDB), series, encode, POST."""
    from payments.observability import remote_write

    with _LOCK:
        generation = _state.generation
        # Strictly increasing, 2 ms apart: a leading 0 sample (ts - 1) never collides
        # with a sample this environment already sent.
        ts = max(int(time.time() * 1000), _state.last_timestamp_ms + 2)
        _state.last_timestamp_ms = ts
        raw, metadata = _raw_series()
        if _state.writer is None:
            _state.writer = remote_write.Writer()
        writer = _state.writer

    def run() -> None:
        try:
            slot = _instance()
            if slot is None:
                result = remote_write.Outcome(False, 0, "instance slot pool exhausted")
            else:
                label, epoch = slot
                with _LOCK:
                    if epoch != _state.epoch:  # a new slot: count from what was delivered
                        _state.epoch, _state.baseline = epoch, dict(_state.delivered)
                        _state.announced = set()
                    series = _finish(raw, label, ts)
                body = remote_write.encode(series, metadata)
                result = writer.send(url, body, deadline, _settings())
                if result.ok:
                    _delivered(raw, epoch, generation)
        except Exception as exc:  # never let a thread die with a traceback on stderr
            result = remote_write.Outcome(False, 0, type(exc).__name__)
        outcome.append(result)

    thread = threading.Thread(target=run, name="metrics-remote-write", daemon=True)
    thread.start()
    return thread


def _remote_write(url: str, deadline: float) -> None:
    """Send the cumulative state in a worker thread; wait for it at most until `deadline`.

    The thread gives a hard bound (DNS, connect and slow reads included) that per-request
    timeouts alone cannot. At most one write is in flight: a later flush skips while one
    is still running, and the next successful write carries the cumulative state anyway.
    """
    # Imported here, before _LOCK is taken: the first import of the remote-write stack
    # (requests, cramjam) takes hundreds of ms in a cold, loaded environment, and under
    # the lock it would hold back every recording meanwhile, the extension's own
    # bookkeeping before it may call event/next included.
    from payments.observability import remote_write  # noqa: F401 - loaded outside _LOCK

    outcome: list[remote_write.Outcome] = []
    with _LOCK:
        if _state.inflight is not None and _state.inflight.is_alive():
            busy = True
        else:
            busy = False
            if _state.generation == _state.delivered_generation:
                return  # nothing new since the last delivered write
            thread = _state.inflight = _start_write(url, deadline, outcome)
    if busy:
        _fail(url, "previous write still in flight", 0)
        return
    thread.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        _fail(url, "timeout", 0)
    elif not outcome[0].ok:
        _fail(url, outcome[0].detail, outcome[0].attempts)


def _remote_write_due(interval: float) -> bool:
    """At most one remote write per PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS (default 5).

    State is cumulative, so a skipped flush loses nothing: the next write carries it. Writing
    after every invocation would cost an HTTP round trip each time for data Prometheus
    evaluates every 15-60 s. The last interval before a shutdown leaves with the SIGTERM
    flush on Lambda (EMF, written on every flush, has it in any case).
    """
    now = time.monotonic()
    with _LOCK:
        if now - _state.last_write_started < interval:
            return False
        _state.last_write_started = now
    return True


def write_on_next_flush() -> None:
    """The next flush writes regardless of the interval: the shutdown flush is the last one,
    so what was recorded since the last write has no later write to leave with."""
    with _LOCK:
        _state.last_write_started = -math.inf


def flush(timeout_seconds: float | None = None) -> None:
    """Export what was recorded: EMF deltas to stdout, cumulative state to Prometheus.

    Never raises and returns within the timeout (METRICS_FLUSH_TIMEOUT_MS, default 200 ms).
    """
    try:
        settings = _settings()
    except Exception:
        _log.warning("metrics settings invalid: nothing exported", exc_info=True)
        return
    if timeout_seconds is None:
        timeout_seconds = settings.metrics_flush_timeout_ms / 1000
    deadline = time.monotonic() + max(0.0, timeout_seconds)
    try:
        with _LOCK:
            entries = _emf_entries()
        emf.write(
            emf.build(settings.namespace, entries, int(time.time() * 1000)),
            settings.emf_output_file,
        )
    except Exception:
        _log.warning("metrics EMF flush failed", exc_info=True)
    url = settings.remote_write_url
    if not url or not _remote_write_due(settings.remote_write_interval_s):
        return
    try:
        _remote_write(url, deadline)
    except Exception as exc:
        _fail(url, type(exc).__name__, 0)
