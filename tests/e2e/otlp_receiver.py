"""A minimal OTLP/HTTP trace receiver for tests: POST /v1/traces, protobuf, gzip-aware.

    receiver = OtlpReceiver.start()          # 127.0.0.1, ephemeral port
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    ...
    spans = receiver.wait_for(lambda spans: len(spans) >= 3)
    receiver.stop()

Every received span is flattened to a dict (hex ids, kind/status names, plain attribute
values, the resource's service.name) so tests read them like the JSON-lines exporter's.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

Predicate = Callable[[list[dict[str, Any]]], bool]


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def _kind(span: Span) -> str:
    # SPAN_KIND_SERVER -> "SERVER", as the SDK's SpanKind names.
    return str(Span.SpanKind.Name(span.kind)).removeprefix("SPAN_KIND_")


def _status(span: Span) -> dict[str, Any]:
    code = str(Status.StatusCode.Name(span.status.code)).removeprefix("STATUS_CODE_")
    return {"code": code, "description": span.status.message or None}


def flatten(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "name": span.name,
                        "service": resource.get("service.name"),
                        "scope": scope_spans.scope.name,
                        "kind": _kind(span),
                        "start_time_unix_nano": span.start_time_unix_nano,
                        "end_time_unix_nano": span.end_time_unix_nano,
                        "status": _status(span),
                        "attributes": {kv.key: any_value(kv.value) for kv in span.attributes},
                        "events": [
                            {
                                "name": event.name,
                                "time_unix_nano": event.time_unix_nano,
                                "attributes": {
                                    kv.key: any_value(kv.value) for kv in event.attributes
                                },
                            }
                            for event in span.events
                        ],
                    }
                )
    return spans


class OtlpReceiver:
    """Collects spans exported over OTLP/HTTP protobuf; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._spans: list[dict[str, Any]] = []
        self.requests = 0
        self.encodings: list[str] = []
        self.raw_bodies: list[bytes] = []  # decoded protobuf payloads (for secret scans)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, port: int = 0) -> OtlpReceiver:
        receiver = cls()
        receiver._serve(port)
        return receiver

    @property
    def endpoint(self) -> str:
        """The base URL for OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def _serve(self, port: int) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] != "/v1/traces":
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    elif encoding not in ("", "identity"):
                        self.send_error(415, f"unsupported Content-Encoding {encoding}")
                        return
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                except Exception:  # a malformed body is the exporter's bug: say 400
                    self.send_error(400, "cannot decode ExportTraceServiceRequest")
                    return
                receiver._add(request, encoding or "identity", body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="otlp-rx", daemon=True)
        self._thread.start()

    def _add(self, request: ExportTraceServiceRequest, encoding: str, body: bytes) -> None:
        with self._lock:
            self.requests += 1
            self.encodings.append(encoding)
            self.raw_bodies.append(body)
            self._spans.extend(flatten(request))
            self._lock.notify_all()

    def spans(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s["trace_id"] == trace_id]

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self.raw_bodies.clear()
            self.encodings.clear()
            self.requests = 0

    def wait_for(self, predicate: Predicate, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The spans once `predicate(spans)` holds; the spans so far after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(list(self._spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return list(self._spans)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
