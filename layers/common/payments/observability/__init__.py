"""The layer's one observability entry point.

    from payments.observability import instrument

    @instrument("payment-gateway")
    def handler(event, context): ...

`instrument` sets tracing, metrics and logging up once per execution environment, then per
invocation:

* API Gateway HTTP API v2 events: a SERVER span `"{method} {route template}"` continuing the
  caller's trace (`traceparent`/`tracestate`/`X-Amzn-Trace-Id`), HTTP semantic attributes,
  ERROR status for 5xx, and the HTTP metrics recorded exactly once (errors included; an
  exception counts as 500 and is re-raised);
* state-machine task events (a `"step"` key): a step span (INTERNAL, child of the
  `trace_context` carrier) holding a SERVER span named after the service; `annotate_step()`
  writes on the step span; exceptions mark both spans ERROR and are re-raised;
* anything else: one span named after the service.

Log lines carry trace_id/span_id while the invocation runs; per-invocation log keys are
cleared afterwards. Metrics then spans are flushed before returning, each bounded by
`OBSERVABILITY_FLUSH_TIMEOUT_MS` (default 200) and never raising.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from payments.observability import logging as _logging
from payments.observability import metrics, tracing
from payments.observability.redaction import redact_attributes, redact_text

Handler = Callable[[dict[str, Any], Any], Any]

__all__ = ["Handler", "current_trace_id", "instrument"]

_DEFAULT_FLUSH_TIMEOUT_MS = 200.0
_PAYMENT_ATTRIBUTES = ("merchant_id", "amount", "currency", "payment_no")

_init_lock = threading.Lock()
_initialised = False
_cold_start = True


def instrument(service: str) -> Callable[[Handler], Handler]:
    """Decorate a Lambda handler with tracing, metrics, correlated logs and bounded flush."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(event: dict[str, Any], context: Any) -> Any:
            _initialise(service, context)
            cold_start = _take_cold_start()
            _logging.logger.append_keys(
                function_request_id=getattr(context, "aws_request_id", None),
                cold_start=cold_start,
            )
            invocation = {
                "faas.coldstart": cold_start,
                "faas.invocation_id": str(getattr(context, "aws_request_id", "") or ""),
            }
            try:
                if isinstance(event, dict) and _is_http_api(event):
                    return _invoke_http(handler, event, context, invocation)
                if isinstance(event, dict) and isinstance(event.get("step"), str):
                    payment = event.get("payment") or {}
                    _logging.logger.append_keys(
                        payment_no=payment.get("payment_no"), merchant_id=payment.get("merchant_id")
                    )
                    return _invoke_task(service, handler, event, context, invocation)
                with _span(service, SpanKind.SERVER, invocation):
                    return handler(event, context)
            finally:
                _logging.clear_invocation_keys()
                _flush()

        return wrapper

    return decorate


def current_trace_id() -> str:
    """Trace id of the current request: the W3C trace id, or a fresh one outside a span."""
    return tracing.current_trace_id() or uuid.uuid4().hex


# --------------------------------------------------------------------------- setup


def _initialise(service: str, context: Any) -> None:
    """Once per execution environment: tracing, metrics, logger, cold-start metric."""
    global _initialised  # noqa: PLW0603 - once per execution environment
    if _initialised:
        return
    with _init_lock:
        if _initialised:
            return
        tracing.setup(service)  # an invalid sampler configuration fails here, loudly
        function_name = str(getattr(context, "function_name", "") or service)
        try:
            metrics.configure(function_name=function_name, service=service)
            metrics.COLD_STARTS_TOTAL.inc(function=function_name)
        except Exception:  # pragma: no cover - metrics must never fail an invocation
            _logging.logger.exception("metrics configuration failed")
        _logging.configure(service)
        _initialised = True


def _take_cold_start() -> bool:
    global _cold_start
    cold, _cold_start = _cold_start, False
    return cold


def _flush_timeout() -> float:
    raw = os.environ.get("OBSERVABILITY_FLUSH_TIMEOUT_MS", "")
    try:
        millis = float(raw) if raw.strip() else _DEFAULT_FLUSH_TIMEOUT_MS
    except ValueError:
        millis = _DEFAULT_FLUSH_TIMEOUT_MS
    return max(0.0, millis) / 1000.0


def _flush() -> None:
    """Spans and metrics within ONE bound, concurrently; never raises, never waits longer.

    `metrics.flush` bounds itself (its remote write runs in a worker thread with the
    deadline; EMF is a local stdout write), so it runs inline: no thread per invocation.
    """
    deadline = time.monotonic() + _flush_timeout()
    spans = tracing.begin_flush()  # exports in its own thread while metrics flush
    with contextlib.suppress(Exception):  # flushing must never fail an invocation
        metrics.flush(max(0.0, deadline - time.monotonic()))
    tracing.wait_flush(spans, deadline)


# --------------------------------------------------------------------------- spans


@contextmanager
def _span(
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, Any],
    context: Any = None,
) -> Iterator[trace.Span]:
    """A current span whose exceptions are recorded (redacted) as ERROR and re-raised."""
    tracer = tracing.get_tracer(__name__)
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=redact_attributes(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            _record_error(span, exc)
            raise


def _record_error(span: trace.Span, exc: BaseException) -> None:
    try:
        import traceback

        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        span.record_exception(
            exc,
            attributes={
                "exception.message": redact_text(str(exc)),
                "exception.stacktrace": redact_text(stack),
            },
        )
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    except Exception:  # noqa: S110 - never mask the handler's exception
        pass


# --------------------------------------------------------------------------- HTTP API


def _is_http_api(event: Mapping[str, Any]) -> bool:
    request_context = event.get("requestContext")
    return isinstance(request_context, Mapping) and "http" in request_context


def _route_template(route_key: Any) -> str:
    """'POST /api/v1/payments/{payment_no}' -> '/api/v1/payments/{payment_no}'."""
    if isinstance(route_key, str):
        _, _, route = route_key.partition(" ")
        if route.startswith("/"):
            return route
    return "unmatched"


def _body_size(body: Any, base64_encoded: bool) -> int:
    if body is None:
        return 0
    if isinstance(body, bytes):
        return len(body)
    if not isinstance(body, str):
        body = json.dumps(body, default=str)
    if base64_encoded:
        try:
            return len(base64.b64decode(body))
        except ValueError:
            return len(body)
    return len(body.encode("utf-8"))


def _response_status_and_size(response: Any) -> tuple[int, int]:
    if isinstance(response, Mapping) and "statusCode" in response:
        try:
            status = int(response["statusCode"])
        except (TypeError, ValueError):
            status = 500
        return status, _body_size(response.get("body"), bool(response.get("isBase64Encoded")))
    # HTTP API payload 2.0: anything else is serialised as a 200 JSON body.
    return 200, _body_size(response, False)


def _invoke_http(
    handler: Handler, event: dict[str, Any], context: Any, invocation: Mapping[str, Any]
) -> Any:
    http = event["requestContext"]["http"]
    method = str(http.get("method") or "GET").upper()
    route = _route_template(event.get("routeKey"))
    headers = event.get("headers")
    parent = tracing.extract_context(headers if isinstance(headers, Mapping) else None)
    request_size = _body_size(event.get("body"), bool(event.get("isBase64Encoded")))
    attributes = {
        **invocation,
        "http.request.method": method,
        "http.route": route,
        "url.path": str(http.get("path") or event.get("rawPath") or ""),
    }
    started = time.perf_counter()
    status, response_size = 500, 0
    with _span(f"{method} {route}", SpanKind.SERVER, attributes, context=parent) as span:
        try:
            response = handler(event, context)
            status, response_size = _response_status_and_size(response)
            return response
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            _record_http_metrics(
                method=method,
                route=route,
                status=status,
                seconds=time.perf_counter() - started,
                request_size=request_size,
                response_size=response_size,
            )


def _record_http_metrics(
    *,
    method: str,
    route: str,
    status: int,
    seconds: float,
    request_size: int,
    response_size: int,
) -> None:
    try:
        metrics.HTTP_REQUESTS_TOTAL.inc(method=method, path=route, status=str(status))
        metrics.HTTP_REQUEST_DURATION.observe(
            seconds, method=method, path=route, status=str(status)
        )
        metrics.HTTP_REQUEST_SIZE.observe(float(request_size), method=method, path=route)
        metrics.HTTP_RESPONSE_SIZE.observe(float(response_size), method=method, path=route)
    except Exception:  # metrics must never fail a payment
        _logging.logger.warning("recording HTTP metrics failed", exc_info=True)


# --------------------------------------------------------------------------- tasks


def _invoke_task(
    service: str,
    handler: Handler,
    event: dict[str, Any],
    context: Any,
    invocation: Mapping[str, Any],
) -> Any:
    step = str(event["step"])
    carrier = event.get("trace_context")
    parent = tracing.extract_context(carrier if isinstance(carrier, Mapping) else None)
    payment = event.get("payment")
    step_attributes: dict[str, Any] = {"step": step}
    if isinstance(payment, Mapping):
        step_attributes.update(
            {
                key: payment[key]
                for key in _PAYMENT_ATTRIBUTES
                if isinstance(payment.get(key), str | int | float | bool)
            }
        )
    with (
        _span(step, SpanKind.INTERNAL, step_attributes, context=parent) as step_span,
        tracing.step_span(step_span),
        _span(service, SpanKind.SERVER, invocation),
    ):
        return handler(event, context)
