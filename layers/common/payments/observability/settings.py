"""Every observability setting, validated once per execution environment.

The names are the environment variables the layer has always read (OpenTelemetry's own
`OTEL_*` where one exists, in the style of `opentelemetry.sdk.environment_variables`), one
constant per variable so that code and tests never spell a name twice. `ObservabilitySettings`
is read once by the container (`payments.observability.container`); an invalid value fails
the cold start loudly (`SettingsError`, naming the variable), never a payment later.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Annotated, Literal, get_args

import msgspec

from payments.records import invalid_field

# --- tracing: sampler ----------------------------------------------------------------------
OTEL_TRACES_SAMPLER = "OTEL_TRACES_SAMPLER"
OTEL_TRACES_SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
JAEGER_SAMPLING_RATE = "JAEGER_SAMPLING_RATE"  # legacy, percent 0..100
# --- tracing: exporters --------------------------------------------------------------------
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
TRACES_EXPORTER_FILE = "TRACES_EXPORTER_FILE"
TRACES_EXPORTER_XRAY = "TRACES_EXPORTER_XRAY"
XRAY_OTLP_ENDPOINT = "XRAY_OTLP_ENDPOINT"
# --- metrics -------------------------------------------------------------------------------
METRICS_NAMESPACE = "METRICS_NAMESPACE"
METRICS_FLUSH_TIMEOUT_MS = "METRICS_FLUSH_TIMEOUT_MS"
EMF_OUTPUT_FILE = "EMF_OUTPUT_FILE"
PROMETHEUS_REMOTE_WRITE_URL = "PROMETHEUS_REMOTE_WRITE_URL"
PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS = "PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS"
PROMETHEUS_REMOTE_WRITE_SIGV4 = "PROMETHEUS_REMOTE_WRITE_SIGV4"
PROMETHEUS_REMOTE_WRITE_REGION = "PROMETHEUS_REMOTE_WRITE_REGION"
PROMETHEUS_INSTANCE_SLOTS = "PROMETHEUS_INSTANCE_SLOTS"
PROMETHEUS_INSTANCE_LEASE_TABLE = "PROMETHEUS_INSTANCE_LEASE_TABLE"
PROMETHEUS_INSTANCE_LEASE_SECONDS = "PROMETHEUS_INSTANCE_LEASE_SECONDS"
# --- export pipeline and the Lambda extension ------------------------------------------------
OBSERVABILITY_FLUSH_TIMEOUT_MS = "OBSERVABILITY_FLUSH_TIMEOUT_MS"
OBSERVABILITY_FLUSH_INTERVAL_MS = "OBSERVABILITY_FLUSH_INTERVAL_MS"
OBSERVABILITY_SPAN_QUEUE_SIZE = "OBSERVABILITY_SPAN_QUEUE_SIZE"
OBSERVABILITY_EXPORT_TIMEOUT_MS = "OBSERVABILITY_EXPORT_TIMEOUT_MS"
OBSERVABILITY_EXTENSION = "OBSERVABILITY_EXTENSION"
AWS_LAMBDA_RUNTIME_API = "AWS_LAMBDA_RUNTIME_API"
# --- identity ------------------------------------------------------------------------------
AWS_LAMBDA_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"
POWERTOOLS_SERVICE_NAME = "POWERTOOLS_SERVICE_NAME"
AWS_REGION = "AWS_REGION"
AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"
PAYMENTS_TABLE = "PAYMENTS_TABLE"

SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# Non-negative and finite: every number is read by `_number`, which refuses inf and nan.
Millis = Annotated[float, msgspec.Meta(ge=0)]


class SettingsError(ValueError):
    """An invalid observability setting (raised at cold start, naming the variable)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    """The observability configuration of one execution environment.

    A frozen stdlib dataclass checked by msgspec (no pydantic on the cold start); build it
    with `from_environ`, the bare constructor checks nothing.
    """

    service: str = "payment-gateway"
    function_name: str = "local"
    region: str = ""
    # Sampling: OTEL_TRACES_SAMPLER(_ARG) win; else JAEGER_SAMPLING_RATE; else always on.
    sampler: SamplerName | None = None
    sampler_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    jaeger_rate: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    # Span exporters (each imported only when it first exports).
    otlp_traces: bool = False
    traces_file: str = ""
    xray: bool = False
    xray_endpoint: str = ""
    # Metrics.
    namespace: str = "PaymentGateway"
    emf_output_file: str = ""
    metrics_flush_timeout_ms: Millis = 200.0
    remote_write_url: str = dataclasses.field(default="", repr=False)  # may carry credentials
    remote_write_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    remote_write_sigv4: bool | None = None  # None: on for Amazon Managed Prometheus hosts
    remote_write_region: str = ""
    instance_slots: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0  # 0: random id per env
    instance_lease_table: str = ""
    instance_lease_s: Annotated[float, msgspec.Meta(ge=10)] = 900.0
    # Export pipeline.
    flush_timeout_ms: Millis = 200.0
    flush_interval_ms: Millis = 1000.0
    span_queue_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 2048
    export_timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = 10_000.0
    extension: Literal["auto", "on", "off"] = "auto"
    runtime_api: str = ""

    @property
    def use_extension(self) -> bool:
        """Export from the in-process Lambda extension (else inline, after each invocation)."""
        return bool(self.runtime_api) and self.extension != "off"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ObservabilitySettings:
        """Read and validate; a bad value raises SettingsError naming its variable."""
        env = os.environ if environ is None else environ
        values, names = _collect(env)
        try:
            # Strict: `_collect` has already parsed every number (a string is never one).
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            key, message = invalid_field(exc)
            key = key or "?"
            name = names.get(key, key)
            raise SettingsError(f"{name}={env.get(name, '')!r} is invalid: {message}") from None


def _get(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    raw = _get(env, name).lower()
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is invalid: use true or false")


def _number(env: Mapping[str, str], name: str) -> float | None:
    raw = _get(env, name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is invalid: not a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} is invalid: not a finite number")
    return value


# field -> variable, for the ones read as plain strings / numbers.
_STRINGS = {
    "function_name": AWS_LAMBDA_FUNCTION_NAME,
    "service": POWERTOOLS_SERVICE_NAME,
    "sampler": OTEL_TRACES_SAMPLER,
    "traces_file": TRACES_EXPORTER_FILE,
    "xray_endpoint": XRAY_OTLP_ENDPOINT,
    "namespace": METRICS_NAMESPACE,
    "emf_output_file": EMF_OUTPUT_FILE,
    "remote_write_url": PROMETHEUS_REMOTE_WRITE_URL,
    "remote_write_region": PROMETHEUS_REMOTE_WRITE_REGION,
    "runtime_api": AWS_LAMBDA_RUNTIME_API,
    "extension": OBSERVABILITY_EXTENSION,
}
_NUMBERS = {
    "sampler_ratio": OTEL_TRACES_SAMPLER_ARG,
    "jaeger_rate": JAEGER_SAMPLING_RATE,
    "metrics_flush_timeout_ms": METRICS_FLUSH_TIMEOUT_MS,
    "remote_write_interval_s": PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS,
    "instance_slots": PROMETHEUS_INSTANCE_SLOTS,
    "instance_lease_s": PROMETHEUS_INSTANCE_LEASE_SECONDS,
    "flush_timeout_ms": OBSERVABILITY_FLUSH_TIMEOUT_MS,
    "flush_interval_ms": OBSERVABILITY_FLUSH_INTERVAL_MS,
    "span_queue_size": OBSERVABILITY_SPAN_QUEUE_SIZE,
    "export_timeout_ms": OBSERVABILITY_EXPORT_TIMEOUT_MS,
}
_INTEGERS = frozenset({"instance_slots", "span_queue_size"})
_LOWERED = frozenset({"sampler", "extension"})


def _collect(env: Mapping[str, str]) -> tuple[dict[str, object], dict[str, str]]:
    values: dict[str, object] = {}
    for field, name in _STRINGS.items():
        if raw := _get(env, name):  # stripped; the sampler and extension names lower-cased
            values[field] = raw.lower() if field in _LOWERED else raw
    for field, name in _NUMBERS.items():
        number = _number(env, name)
        if number is not None:
            values[field] = int(number) if field in _INTEGERS and number.is_integer() else number
    values["region"] = _get(env, AWS_REGION) or _get(env, AWS_DEFAULT_REGION)
    values["otlp_traces"] = bool(
        _get(env, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or _get(env, OTEL_EXPORTER_OTLP_ENDPOINT)
    )
    values["xray"] = bool(_flag(env, TRACES_EXPORTER_XRAY))
    values["remote_write_sigv4"] = _flag(env, PROMETHEUS_REMOTE_WRITE_SIGV4)
    values["instance_lease_table"] = _get(env, PROMETHEUS_INSTANCE_LEASE_TABLE) or _get(
        env, PAYMENTS_TABLE
    )
    return values, {**_STRINGS, **_NUMBERS}
