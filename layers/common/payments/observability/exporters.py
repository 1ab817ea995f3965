"""Span exporters chosen by configuration: OTLP/HTTP, AWS X-Ray (SigV4 OTLP), JSON lines.

Cold start: the OTLP exporter pulls in `requests`, protobuf and the OTLP encoders (tens of
milliseconds), so the configured exporters are wrapped in `LazySpanExporter` and built on
their first export, which runs in the export pipeline after the first response, never
during INIT or on the response path. Configuration errors (X-Ray without a region) are still
found at cold start, because the factory's arguments are resolved eagerly.

X-Ray choice: the SigV4-signed OTLP endpoint, not the X-Ray daemon's UDP emitter. The same
OTLP protobuf spans go to every backend, no daemon is needed (the daemon and the X-Ray SDK
reach end of support in Feb 2027), and it works the same outside Lambda. It requires
CloudWatch Transaction Search in the account and the AWSXrayWriteOnlyAccess permissions.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from payments.observability.settings import ObservabilitySettings, SettingsError

if TYPE_CHECKING:
    import requests

_SIGNED_HEADERS = {"content-type", "content-encoding", "host"}


class LazySpanExporter(SpanExporter):
    """Builds the real exporter on first use (in the export pipeline, not at cold start)."""

    def __init__(self, name: str, factory: Callable[[], SpanExporter]) -> None:
        self.name = name
        self._factory = factory
        self._exporter: SpanExporter | None = None
        self._lock = threading.Lock()

    @property
    def exporter(self) -> SpanExporter:
        if self._exporter is None:
            with self._lock:
                if self._exporter is None:
                    self._exporter = self._factory()
        return self._exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export(spans)

    def shutdown(self) -> None:
        if self._exporter is not None:
            self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def lazy_exporters(settings: ObservabilitySettings) -> list[SpanExporter]:
    """The configured exporters, each built on its first export."""
    exporters: list[SpanExporter] = []
    if settings.otlp_traces:
        exporters.append(LazySpanExporter("otlp", _otlp))
    if settings.traces_file:
        exporters.append(JsonLinesSpanExporter(settings.traces_file))
    if settings.xray:
        endpoint, region = xray_endpoint(settings)
        exporters.append(LazySpanExporter("xray", lambda: _xray(endpoint, region)))
    return exporters


def exporters_now(settings: ObservabilitySettings) -> list[SpanExporter]:
    """The configured exporters, built at once (diagnostics and tests)."""
    return [
        exporter.exporter if isinstance(exporter, LazySpanExporter) else exporter
        for exporter in lazy_exporters(settings)
    ]


def _otlp() -> SpanExporter:
    # Reads every standard OTEL_EXPORTER_OTLP_* variable (headers, timeout, compression).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def xray_endpoint(settings: ObservabilitySettings) -> tuple[str, str]:
    if settings.xray_endpoint:
        return settings.xray_endpoint, settings.region or "us-east-1"
    if not settings.region:
        raise SettingsError("TRACES_EXPORTER_XRAY needs AWS_REGION or XRAY_OTLP_ENDPOINT")
    return f"https://xray.{settings.region}.amazonaws.com/v1/traces", settings.region


def _xray(endpoint: str, region: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, session=sigv4_session(region))


def sigv4_session(region: str) -> requests.Session:
    """A requests Session signing every request with SigV4 (service `xray`)."""
    import requests

    class _SigV4Auth(requests.auth.AuthBase):
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
