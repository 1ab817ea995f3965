"""One container per execution environment for the layer's observability singletons.

Settings, the tracer provider's indirections, the span queues, the export pipeline, the
Lambda extension and the Prometheus instance slot live here, built on first use. `reset()`
is the one way to start over (tests, the bench, a new local deployment through
`payments.services.reset()`); nothing outside this package touches private names.

The global TracerProvider survives a reset: OpenTelemetry allows one per process, so the
reset re-points its sampler and span queues instead of replacing it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from payments.observability import exporters as _exporters
from payments.observability.extension import (
    ExtensionsClient,
    InternalExtension,
    InvocationTracker,
    install_sigterm_flush,
)
from payments.observability.pipeline import ExportPipeline, FlushOutcome
from payments.observability.provider import (
    CachingTracerProvider,
    SwitchableSampler,
    build_sampler,
    install_global_provider,
)
from payments.observability.settings import ObservabilitySettings
from payments.observability.spans import QueueingSpanProcessor, SpanQueue

if TYPE_CHECKING:
    from payments.observability.series_pool import InstanceSlot

_log = logging.getLogger(__name__)
TRACER_NAME = "payments.observability"


class Observability:
    """The observability state of one execution environment."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._settings: ObservabilitySettings | None = None
        self.sampler = SwitchableSampler()
        self.processor = QueueingSpanProcessor()
        self.provider: CachingTracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        self.tracker = InvocationTracker()
        self._fresh()

    def _fresh(self) -> None:
        """Per-environment state (what `reset` forgets)."""
        self.tracing_configured = False
        self.initialised = False
        self.cold_start = True
        self.extension: InternalExtension | None = None
        self._pipeline: ExportPipeline | None = None
        self.instance_slot: InstanceSlot | None = None
        self._dropped_reported = 0

    # ------------------------------------------------------------------ settings

    @property
    def settings(self) -> ObservabilitySettings:
        settings = self._settings
        if settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = ObservabilitySettings.from_environ()
                settings = self._settings
        return settings

    def forget_settings(self) -> None:
        """Read the environment again on next use (after tests change it)."""
        with self._lock:
            self._settings = None

    def refresh_settings(self) -> ObservabilitySettings:
        """Read the environment again (tests that change it mid-way)."""
        with self._lock:
            self._settings = None
        return self.settings

    # ------------------------------------------------------------------ tracing

    @property
    def tracer(self) -> trace.Tracer:
        """The layer's tracer, fetched once (no `get_tracer` per span)."""
        tracer = self._tracer
        if tracer is None:
            provider = self.provider
            tracer = provider.get_tracer(TRACER_NAME) if provider else trace.get_tracer(TRACER_NAME)
            if provider is not None:
                self._tracer = tracer
        return tracer

    def setup_tracing(self, service: str, exporters: Sequence[SpanExporter] | None = None) -> None:
        """Sampler and exporters from the settings (or `exporters`), once per environment."""
        if self.tracing_configured:
            return
        with self._lock:
            if self.tracing_configured:
                return
            settings = self.refresh_settings() if exporters is not None else self.settings
            sampler = build_sampler(settings)
            chosen = (
                list(exporters) if exporters is not None else _exporters.lazy_exporters(settings)
            )
            if self.provider is None:
                self.provider = install_global_provider(service, self.sampler, self.processor)
            self.sampler.delegate = sampler
            self.processor.shutdown()
            self.processor.queues = tuple(SpanQueue(e, settings.span_queue_size) for e in chosen)
            self.tracing_configured = True

    def reset_tracing(self) -> None:
        with self._lock:
            self.processor.shutdown()
            self.sampler.delegate = ParentBased(ALWAYS_ON)
            self.tracing_configured = False

    # ------------------------------------------------------------------ export

    @property
    def pipeline(self) -> ExportPipeline:
        pipeline = self._pipeline
        if pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    timeout = self.settings.export_timeout_ms / 1000
                    self._pipeline = ExportPipeline(self._export_spans, _export_metrics, timeout)
                pipeline = self._pipeline
        return pipeline

    def _export_spans(self, deadline: float) -> None:
        for queue in self.processor.queues:
            queue.export_pending(deadline)

    def flush(self, budget_s: float | None = None, *, final: bool = False) -> FlushOutcome:
        """Export spans and metrics, waiting at most `budget_s` (default: the flush bound).

        `final` (shutdown): also wait for exports already in flight and what follows them,
        and remote-write even within PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS.
        """
        if budget_s is None:
            budget_s = self.settings.flush_timeout_ms / 1000
        self._count_dropped()
        if final:
            from payments.observability import metrics

            metrics.write_on_next_flush()
        return self.pipeline.flush(budget_s, behind_in_flight=final)

    def _count_dropped(self) -> None:
        from payments.observability import metrics

        dropped = self.processor.dropped()
        if dropped > self._dropped_reported:
            metrics.TELEMETRY_SPANS_DROPPED_TOTAL.inc(float(dropped - self._dropped_reported))
            self._dropped_reported = dropped

    # ------------------------------------------------------------------ the Lambda extension

    def register_extension(self) -> None:
        """On Lambda (INIT): register the internal extension; elsewhere nothing."""
        settings = self.settings
        if self.extension is not None or not settings.use_extension:
            return
        with self._lock:
            if self.extension is not None:
                return
            client = ExtensionsClient(settings.runtime_api)
            try:
                client.register()
            except Exception as exc:  # no extension: the wrapper flushes inline instead
                _log.warning("telemetry extension not registered: %s", type(exc).__name__)
                return
            self.extension = InternalExtension(
                client,
                self.tracker,
                self.flush,
                budget_s=settings.flush_timeout_ms / 1000,
                interval_s=settings.flush_interval_ms / 1000,
                on_post_runtime=_record_post_runtime,
            )
            self.extension.start()
            install_sigterm_flush(self._shutdown_flush)

    def _shutdown_flush(self, budget_s: float) -> None:
        self.flush(budget_s, final=True)
        slot = self.instance_slot
        if slot is not None:
            with contextlib.suppress(Exception):
                slot.release()

    def invocation_finished(self, request_id: str, caller: FrameType | None) -> None:
        """The handler returned: leave export to the extension, or flush inline (bounded)."""
        extension = self.extension
        if extension is not None and extension.alive:
            self.tracker.finished(request_id, caller)
            return
        started = time.monotonic()
        with contextlib.suppress(Exception):  # flushing must never fail an invocation
            self.flush()
        _record_flush("inline", time.monotonic() - started)

    # ------------------------------------------------------------------ reset

    def reset(self) -> None:
        """Forget the environment: settings, tracing set-up, queues, pipeline, metrics."""
        from payments.observability import metrics

        with self._lock:
            if self.extension is not None:
                self.extension.stop()
            if self._pipeline is not None:
                self._pipeline.stop()
            self.reset_tracing()
            self._fresh()
            self._settings = None
        metrics.reset()


def _export_metrics(deadline: float) -> None:
    from payments.observability import metrics

    metrics.flush(max(0.0, deadline - time.monotonic()))


def _record_flush(mode: str, seconds: float) -> None:
    from payments.observability import metrics

    with contextlib.suppress(Exception):
        metrics.TELEMETRY_FLUSH_DURATION.observe(seconds, mode=mode)


def _record_post_runtime(seconds: float, flushed: bool) -> None:
    _record_flush("extension" if flushed else "extension_skipped", seconds)


_CONTAINER = Observability()


def container() -> Observability:
    """The observability container of this execution environment."""
    return _CONTAINER


def reset() -> None:
    """Start the environment's observability over (tests, bench, new local deployments)."""
    _CONTAINER.reset()
