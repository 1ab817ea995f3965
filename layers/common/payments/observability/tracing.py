"""The tracing API of the layer: propagation, step annotations, set-up and flush.

Business code instruments with the OpenTelemetry API directly (`trace.get_tracer(__name__)`,
cached by the provider) and with the helpers here: `annotate_step`, `fail_step`,
`inject_context`, `extract_context`, `current_trace_id`. The pieces live by concern:

* `provider`   the process's TracerProvider, sampler and cached tracers;
* `settings`   the sampler and exporter configuration (OTEL_TRACES_SAMPLER(_ARG), the legacy
               JAEGER_SAMPLING_RATE 0..100, OTEL_EXPORTER_OTLP_*, TRACES_EXPORTER_FILE,
               TRACES_EXPORTER_XRAY), validated once;
* `exporters`  OTLP/HTTP, X-Ray (SigV4 OTLP) and JSON lines, built on first export;
* `spans`      the bounded queues finished spans wait in;
* `pipeline` / `extension`  when and where they are exported.

Propagators: AWS X-Ray (`X-Amzn-Trace-Id`), W3C `traceparent`/`tracestate` and W3C baggage.
On extraction W3C wins when both headers are present (API Gateway adds an `X-Amzn-Trace-Id`
of its own); header names are matched case-insensitively.

Tests: `setup(service, exporters=[InMemorySpanExporter()])` replaces the configured exporters;
`reset_for_tests()` lets `setup()` run again (the container's full reset is
`payments.observability.reset()`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagate import set_global_textmap
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from payments.observability import exporters as _exporters
from payments.observability.container import container
from payments.observability.exporters import JsonLinesSpanExporter
from payments.observability.provider import build_sampler
from payments.observability.redaction import redact_attributes
from payments.observability.settings import ObservabilitySettings, SettingsError

__all__ = [
    "JsonLinesSpanExporter",
    "TracingConfigError",
    "annotate_step",
    "current_trace_id",
    "exporters_from_env",
    "extract_context",
    "fail_step",
    "flush",
    "get_tracer",
    "inject_context",
    "reset_for_tests",
    "sampler_from_env",
    "setup",
    "step_span",
]

# Invalid tracing configuration (raised at cold start): one error type for every setting.
TracingConfigError = SettingsError


class _CaseInsensitiveGetter(Getter[Mapping[str, Any]]):
    """Header lookup ignoring case (API Gateway v2 lower-cases, X-Ray says X-Amzn-Trace-Id)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        if value is None:
            return None
        if isinstance(value, list | tuple):
            return [str(item) for item in value]
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier.keys())


_GETTER = _CaseInsensitiveGetter()
# X-Ray first so that a W3C traceparent, when present, overrides it.
_PROPAGATOR = CompositePropagator(
    [AwsXRayPropagator(), TraceContextTextMapPropagator(), W3CBaggagePropagator()]
)
set_global_textmap(_PROPAGATOR)
_step_span: ContextVar[trace.Span | None] = ContextVar("payments_step_span", default=None)


# --------------------------------------------------------------------------- set-up


def setup(service_name: str, *, exporters: Sequence[SpanExporter] | None = None) -> None:
    """Configure sampler and exporters of this execution environment (once).

    `exporters` (tests) replaces the exporters chosen by the settings. Raises
    `TracingConfigError` for an invalid configuration.
    """
    container().setup_tracing(service_name, exporters)


def reset_for_tests() -> None:
    """Let the next `setup()` reconfigure sampler and exporters (reads the environment again)."""
    obs = container()
    obs.reset_tracing()
    obs.forget_settings()


def get_tracer(name: str = "payments") -> trace.Tracer:
    """A tracer of the environment's provider (cached per name)."""
    provider = container().provider
    return provider.get_tracer(name) if provider is not None else trace.get_tracer(name)


def sampler_from_env() -> Sampler:
    """The sampler the environment configures (reads it now)."""
    return build_sampler(ObservabilitySettings.from_environ())


def exporters_from_env() -> list[SpanExporter]:
    """The exporters the environment configures, built now (diagnostics and tests)."""
    return _exporters.exporters_now(ObservabilitySettings.from_environ())


def flush(timeout_seconds: float) -> None:
    """Export the finished spans now, waiting at most `timeout_seconds`; never raises."""
    try:
        pipeline = container().pipeline
        lane = pipeline.lanes[0]
        lane.wait(lane.request(), time.monotonic() + max(0.0, timeout_seconds))
    except Exception:  # noqa: S110 - flushing is best effort
        pass


# --------------------------------------------------------------------------- API


def extract_context(carrier: Mapping[str, Any] | None) -> Context:
    """Context from HTTP headers (any case) or a state-machine `trace_context` carrier."""
    if not carrier or not isinstance(carrier, Mapping):
        return Context()
    lowered = {str(k).lower(): v for k, v in carrier.items()}
    return _PROPAGATOR.extract(lowered, context=Context(), getter=_GETTER)


def inject_context() -> dict[str, str]:
    """The current context as a carrier for the state-machine input or an HTTP call."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def current_trace_id() -> str:
    """32 lowercase hex of the current trace ('' outside any span)."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.trace_id else ""


@contextmanager
def step_span(span: trace.Span) -> Iterator[trace.Span]:
    """Make `span` the target of `annotate_step` for the duration (used by `instrument`)."""
    token = _step_span.set(span)
    try:
        yield span
    finally:
        _step_span.reset(token)


def annotate_step(**attributes: str | int | float | bool) -> None:
    """Set attributes on the current state-machine step span (or the current span)."""
    span = _step_span.get() or trace.get_current_span()
    if span.is_recording():  # nothing to redact for a span nobody exports
        span.set_attributes(redact_attributes(attributes))


def fail_step(description: str) -> None:
    """Mark the current step span ERROR for a business failure (a decline is not an
    exception, yet operators must see the failed step in the trace map)."""
    span = _step_span.get() or trace.get_current_span()
    span.set_status(Status(StatusCode.ERROR, description))
