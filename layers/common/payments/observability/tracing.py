"""OpenTelemetry setup for the layer: provider, sampler, propagators and exporters.

Every module instruments with the OpenTelemetry API directly
(`opentelemetry.trace.get_tracer(__name__)`, `opentelemetry.propagate.inject`); this module
owns the provider, sampler, exporters and propagators of the execution environment.
`setup()` installs one SDK `TracerProvider` as *the global* provider, so tracers obtained
anywhere with `trace.get_tracer(...)` (business code, the Stripe client) use it.

Provider: resource `service.name`, `AwsXRayIdGenerator` (trace ids whose first 8 hex are the
epoch seconds, accepted by X-Ray), a sampler and a `BatchSpanProcessor` per exporter.

Sampler (checked at cold start; an invalid value raises `TracingConfigError`):
  * `OTEL_TRACES_SAMPLER` = always_on | always_off | traceidratio | parentbased_always_on |
    parentbased_always_off | parentbased_traceidratio, with `OTEL_TRACES_SAMPLER_ARG`
    (ratio 0..1 for the *traceidratio samplers, default 1.0);
  * else the legacy `JAEGER_SAMPLING_RATE` (percent 0..100, default 100)
    -> ParentBased(TraceIdRatioBased(rate / 100)).

Propagators: AWS X-Ray (`X-Amzn-Trace-Id`), W3C `traceparent`/`tracestate` and W3C baggage.
On extraction W3C wins when both headers are present (API Gateway adds an `X-Amzn-Trace-Id`
of its own); header names are matched case-insensitively.

Exporters, chosen by configuration and imported only when configured (cold start):
  * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` -> OTLP/HTTP
    protobuf (Jaeger, Tempo, collectors). The exporter reads every standard
    `OTEL_EXPORTER_OTLP_*` variable (headers, timeout, compression, certificates) itself.
  * `TRACES_EXPORTER_FILE=<path>` -> one JSON object per span and line (local stack).
  * `TRACES_EXPORTER_XRAY=true` -> AWS X-Ray through its OTLP endpoint
    `https://xray.<AWS_REGION>.amazonaws.com/v1/traces` (override: `XRAY_OTLP_ENDPOINT`),
    every request signed with SigV4 (service `xray`) using the function's credentials.
    Requires CloudWatch Transaction Search to be enabled in the account and the function role
    to be allowed to send spans to X-Ray (AWSXrayWriteOnlyAccess; check the X-Ray OTLP
    endpoint documentation for the exact IAM actions).

X-Ray choice: the SigV4-signed OTLP endpoint, not the X-Ray daemon's UDP emitter. The same
OTLP protobuf spans go to every backend (one encoder, no translation to X-Ray segment
documents, W3C and X-Ray ids kept as they are); it needs no daemon (the daemon and the X-Ray
SDK recorder reach end of support in Feb 2027), works the same outside Lambda, and does not
depend on Lambda active tracing. Cost: an HTTPS request at flush and a botocore import (already
present in the Lambda runtime and loaded by the functions' boto3 clients), only when enabled.

Tests: `setup(service, exporters=[InMemorySpanExporter()])` replaces the configured exporters;
`reset_for_tests()` lets `setup()` run again. The global provider is installed only once per
process (an OpenTelemetry rule), so its sampler and span processors are indirections that a
later `setup()` re-points; the resource (service.name) stays the one of the first setup.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagate import set_global_textmap
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from payments.observability.redaction import redact_attributes

if TYPE_CHECKING:
    import requests

__all__ = [
    "JsonLinesSpanExporter",
    "TracingConfigError",
    "annotate_step",
    "current_trace_id",
    "extract_context",
    "flush",
    "get_tracer",
    "inject_context",
    "reset_for_tests",
    "sampler_from_env",
    "setup",
    "step_span",
]


class TracingConfigError(ValueError):
    """Invalid tracing configuration (raised at cold start)."""


# --------------------------------------------------------------------------- indirections


class _SwitchableSampler(Sampler):
    """The provider's sampler; `setup()` points it at the configured one."""

    def __init__(self) -> None:
        self.delegate: Sampler = ParentBased(ALWAYS_ON)

    def should_sample(  # noqa: PLR0917 - the SDK's signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return self.delegate.get_description()


class _SwitchableProcessors(SpanProcessor):
    """The provider's one span processor, forwarding to the configured ones."""

    def __init__(self) -> None:
        self.processors: tuple[SpanProcessor, ...] = ()
        # Spans ended since the last flush: with none (sampled out), a flush has no work.
        self.ended = 0

    def replace(self, processors: Sequence[SpanProcessor]) -> None:
        old, self.processors = self.processors, tuple(processors)
        for processor in old:
            _shutdown_quietly(processor)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self.processors:
            processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1
        for processor in self.processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        processors, self.processors = self.processors, ()
        for processor in processors:
            with contextlib.suppress(Exception):
                processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(processor.force_flush(timeout_millis) for processor in self.processors)


def _shutdown_quietly(processor: SpanProcessor) -> None:
    """Shut a replaced processor down without waiting long on a hung exporter."""
    with contextlib.suppress(Exception):
        thread = threading.Thread(target=processor.shutdown, name="otel-shutdown", daemon=True)
        thread.start()
        thread.join(0.5)


# --------------------------------------------------------------------------- propagation


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


# --------------------------------------------------------------------------- state

_lock = threading.Lock()
_provider: TracerProvider | None = None
_sampler = _SwitchableSampler()
_processors = _SwitchableProcessors()
_configured = False
_flush_thread: threading.Thread | None = None
_step_span: ContextVar[trace.Span | None] = ContextVar("payments_step_span", default=None)

_log = logging.getLogger(__name__)
_TRUE = {"1", "true", "yes", "on"}


def setup(service_name: str, *, exporters: Sequence[SpanExporter] | None = None) -> None:
    """Install the TracerProvider of this execution environment once.

    `exporters` (tests) replaces the exporters chosen from the environment. Raises
    `TracingConfigError` for an invalid sampler configuration.
    """
    global _configured, _provider  # noqa: PLW0603 - one provider per execution environment
    if _configured:
        return
    with _lock:
        if _configured:
            return
        sampler = sampler_from_env()
        chosen = list(exporters) if exporters is not None else exporters_from_env()
        if _provider is None:
            _provider = TracerProvider(
                resource=Resource.create({"service.name": service_name}),
                sampler=_sampler,
                id_generator=AwsXRayIdGenerator(),
            )
            _provider.add_span_processor(_processors)
            trace.set_tracer_provider(_provider)
            set_global_textmap(_PROPAGATOR)
            if trace.get_tracer_provider() is not _provider:
                _log.warning(
                    "another global TracerProvider was installed first: spans of "
                    "trace.get_tracer() callers will not reach the configured exporters"
                )
        _sampler.delegate = sampler
        _processors.replace([BatchSpanProcessor(exporter) for exporter in chosen])
        _configured = True


def reset_for_tests() -> None:
    """Let the next `setup()` reconfigure sampler and exporters (tests only)."""
    global _configured, _flush_thread  # noqa: PLW0603
    with _lock:
        _processors.replace(())
        _flush_thread = None
        _sampler.delegate = ParentBased(ALWAYS_ON)
        _configured = False


def get_tracer(name: str = "payments") -> trace.Tracer:
    """A tracer of the provider `setup()` installed (also the global one)."""
    provider = _provider
    return provider.get_tracer(name) if provider is not None else trace.get_tracer(name)


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def sampler_from_env() -> Sampler:
    """The sampler configured by OTEL_TRACES_SAMPLER(_ARG) or JAEGER_SAMPLING_RATE."""
    name = _env("OTEL_TRACES_SAMPLER").lower()
    if name:
        return _otel_sampler(name, _env("OTEL_TRACES_SAMPLER_ARG"))
    raw = _env("JAEGER_SAMPLING_RATE")
    if not raw:
        return ParentBased(ALWAYS_ON)
    rate = _bounded("JAEGER_SAMPLING_RATE", raw, 100.0)
    return ParentBased(TraceIdRatioBased(rate / 100.0))


def _ratio(arg: str) -> float:
    return _bounded("OTEL_TRACES_SAMPLER_ARG", arg, 1.0) if arg else 1.0


def _bounded(name: str, raw: str, upper: float) -> float:
    """A number from 0 to `upper`, or a TracingConfigError naming the variable."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= upper:  # NaN fails too
        raise TracingConfigError(f"{name} must be a number from 0 to {upper:g}, got {raw!r}")
    return value


def _otel_sampler(name: str, arg: str) -> Sampler:
    if name == "always_on":
        return ALWAYS_ON
    if name == "always_off":
        return ALWAYS_OFF
    if name == "traceidratio":
        return TraceIdRatioBased(_ratio(arg))
    if name == "parentbased_always_on":
        return ParentBased(ALWAYS_ON)
    if name == "parentbased_always_off":
        return ParentBased(ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return ParentBased(TraceIdRatioBased(_ratio(arg)))
    raise TracingConfigError(
        f"OTEL_TRACES_SAMPLER={name!r} is not supported; use always_on, always_off, "
        "traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )


# --------------------------------------------------------------------------- exporters


def exporters_from_env() -> list[SpanExporter]:
    """The exporters the environment asks for (imported lazily)."""
    exporters: list[SpanExporter] = []
    if _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if path := _env("TRACES_EXPORTER_FILE"):
        exporters.append(JsonLinesSpanExporter(path))
    if _env("TRACES_EXPORTER_XRAY").lower() in _TRUE:
        exporters.append(_xray_exporter())
    return exporters


def _xray_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    region = _env("AWS_REGION") or _env("AWS_DEFAULT_REGION")
    endpoint = _env("XRAY_OTLP_ENDPOINT")
    if not endpoint:
        if not region:
            raise TracingConfigError("TRACES_EXPORTER_XRAY needs AWS_REGION or XRAY_OTLP_ENDPOINT")
        endpoint = f"https://xray.{region}.amazonaws.com/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint, session=_sigv4_session(region or "us-east-1"))


def _sigv4_session(region: str) -> requests.Session:
    import requests

    class _SigV4Auth(requests.auth.AuthBase):
        """Signs each OTLP request with the function's credentials (service `xray`)."""

        def __init__(self) -> None:
            import botocore.session

            self._credentials = botocore.session.get_session().get_credentials()

        def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest

            if self._credentials is None:
                return request
            headers = {k: v for k, v in request.headers.items() if k.lower() in _SIGNED_HEADERS}
            aws_request = AWSRequest(
                method=request.method, url=request.url, data=request.body, headers=headers
            )
            SigV4Auth(self._credentials.get_frozen_credentials(), "xray", region).add_auth(
                aws_request
            )
            request.headers.update(dict(aws_request.headers.items()))
            return request

    session = requests.Session()
    session.auth = _SigV4Auth()
    return session


_SIGNED_HEADERS = {"content-type", "content-encoding", "host"}


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file (the local stack reads it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    @staticmethod
    def to_dict(span: ReadableSpan) -> dict[str, Any]:
        ctx = span.get_span_context()
        parent = span.parent
        return {
            "trace_id": format(ctx.trace_id, "032x") if ctx else "",
            "span_id": format(ctx.span_id, "016x") if ctx else "",
            "parent_span_id": format(parent.span_id, "016x") if parent else None,
            "name": span.name,
            "service": span.resource.attributes.get("service.name"),
            "kind": span.kind.name,
            "start_time_unix_nano": span.start_time,
            "end_time_unix_nano": span.end_time,
            "status": {
                "code": span.status.status_code.name,
                "description": span.status.description,
            },
            "attributes": dict(span.attributes or {}),
            "events": [
                {
                    "name": event.name,
                    "time_unix_nano": event.timestamp,
                    "attributes": dict(event.attributes or {}),
                }
                for event in span.events
            ],
        }

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            lines = "".join(
                json.dumps(self.to_dict(span), default=str, separators=(",", ":")) + "\n"
                for span in spans
            )
            with self._lock, open(self.path, "a", encoding="utf-8") as handle:
                handle.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


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
    span.set_attributes(redact_attributes(attributes))


def fail_step(description: str) -> None:
    """Mark the current step span ERROR for a business failure (a decline is not an
    exception, yet operators must see the failed step in the trace map)."""
    span = _step_span.get() or trace.get_current_span()
    span.set_status(Status(StatusCode.ERROR, description))


def flush(timeout_seconds: float) -> None:
    """Export finished spans before the invocation returns, within `timeout_seconds`."""
    wait_flush(begin_flush(), time.monotonic() + max(0.0, timeout_seconds))


def begin_flush() -> threading.Thread | None:
    """Start exporting the spans ended since the last flush; never raises.

    The SDK's force_flush exports synchronously and ignores its timeout, so it runs in a
    daemon thread that the caller waits for with its own deadline (`wait_flush`). Nothing to
    export (no span ended, e.g. sampled out) starts nothing; an export still stuck from an
    earlier invocation (backend down or hung) is not doubled nor waited for: its spans stay
    queued in the batch processors and leave with a later flush.
    """
    global _flush_thread  # noqa: PLW0603
    try:
        provider = _provider
        if provider is None or not _processors.processors or _processors.ended == 0:
            return None
        previous = _flush_thread
        if previous is not None and previous.is_alive():
            return None
        _processors.ended = 0
        thread = threading.Thread(
            target=_force_flush_quietly, args=(provider,), name="otel-flush", daemon=True
        )
        _flush_thread = thread
        thread.start()
        return thread
    except Exception:
        return None


def wait_flush(thread: threading.Thread | None, deadline: float) -> None:
    """Wait for a flush started by `begin_flush` until `deadline` (time.monotonic())."""
    if thread is not None:
        thread.join(max(0.0, deadline - time.monotonic()))


def _force_flush_quietly(provider: TracerProvider) -> None:
    with contextlib.suppress(Exception):  # a flush is best effort
        provider.force_flush()
