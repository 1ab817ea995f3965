"""The TracerProvider of the process: sampler, id generator, cached tracers.

OpenTelemetry allows one global provider per process, so it is built once and its sampler
and span processor are indirections that a reconfiguration (a new execution environment in
tests, a new `setup()`) re-points. Tracers are cached per name: the SDK's `get_tracer`
builds an InstrumentationScope and runs `warnings` machinery on every call, which business
code calling `trace.get_tracer(__name__)` per span would otherwise pay each time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from payments.observability.settings import ObservabilitySettings

_log = logging.getLogger(__name__)


class SwitchableSampler(Sampler):
    """The provider's sampler; reconfiguration points it at the configured one."""

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


class CachingTracerProvider(TracerProvider):
    """A TracerProvider whose `get_tracer` returns one cached tracer per scope."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cached: dict[tuple[str, str | None, str | None], trace.Tracer] = {}
        self._cache_lock = threading.Lock()

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        if attributes:  # scope attributes make a distinct scope: not worth caching
            return super().get_tracer(
                instrumenting_module_name, instrumenting_library_version, schema_url, attributes
            )
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        tracer = self._cached.get(key)
        if tracer is None:
            with self._cache_lock:
                tracer = self._cached.get(key)
                if tracer is None:
                    tracer = super().get_tracer(*key)
                    self._cached[key] = tracer
        return tracer


def build_sampler(settings: ObservabilitySettings) -> Sampler:
    """OTEL_TRACES_SAMPLER(_ARG), else JAEGER_SAMPLING_RATE (parent-based), else always on."""
    name = settings.sampler
    if name is None:
        if settings.jaeger_rate is None:
            return ParentBased(ALWAYS_ON)
        return ParentBased(TraceIdRatioBased(settings.jaeger_rate / 100.0))
    return named_sampler(name, settings.sampler_ratio)


def named_sampler(name: str, ratio: float) -> Sampler:
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
    }
    if name in samplers:
        return samplers[name]
    if name == "traceidratio":
        return TraceIdRatioBased(ratio)
    if name == "parentbased_traceidratio":
        return ParentBased(TraceIdRatioBased(ratio))
    raise ValueError(f"unknown sampler {name!r}")


def install_global_provider(
    service: str, sampler: Sampler, processor: SpanProcessor
) -> CachingTracerProvider:
    """Build the process's provider and make it the global one (once per process)."""
    provider = CachingTracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=sampler,
        id_generator=AwsXRayIdGenerator(),
    )
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        _log.warning(
            "another global TracerProvider was installed first: spans of "
            "trace.get_tracer() callers will not reach the configured exporters"
        )
    return provider
