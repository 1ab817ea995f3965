"""The layer's observability: one entry point, and the modules behind it by concern.

    from payments.observability import instrument

    @instrument("payment-gateway")
    def handler(event, context): ...

Modules:
  instrument   the handler wrapper (spans, HTTP metrics, log keys); records, never exports
  settings     every setting, validated once
  container    the per-environment singletons and their one `reset()`
  provider     TracerProvider, sampler, cached tracers
  tracing      the tracing API (propagation, step annotations)
  spans        bounded span queues
  exporters    OTLP/HTTP, X-Ray, JSON lines (built on first export)
  pipeline     the two export lanes and the bounded flush
  extension    the in-process Lambda extension (export after the response)
  metrics      declarations and the recording API; emf and remote_write export them
  series_pool  leased `instance` slots: Prometheus series bounded by peak concurrency
  logging, redaction

Guarantee: export never runs on the response path on Lambda (the extension exports after
the runtime has posted the response, bounded before the environment may freeze); outside
Lambda the same pipeline flushes inline, bounded by OBSERVABILITY_FLUSH_TIMEOUT_MS.
"""

from __future__ import annotations

import sys
import types
import uuid

from payments.observability import metrics, tracing
from payments.observability.container import container, reset
from payments.observability.instrument import Handler, instrument

__all__ = ["Handler", "container", "current_trace_id", "instrument", "metrics", "reset", "tracing"]


def current_trace_id() -> str:
    """Trace id of the current request: the W3C trace id, or a fresh one outside a span."""
    return tracing.current_trace_id() or uuid.uuid4().hex


class _Package(types.ModuleType):
    """Keeps `observability._initialised` / `_cold_start` working for callers that still set
    them (tests outside this package): they are the container's flags now."""

    @property
    def _initialised(self) -> bool:
        return container().initialised

    @_initialised.setter
    def _initialised(self, value: bool) -> None:
        container().initialised = value

    @property
    def _cold_start(self) -> bool:
        return container().cold_start

    @_cold_start.setter
    def _cold_start(self, value: bool) -> None:
        container().cold_start = value


sys.modules[__name__].__class__ = _Package
