"""`instrument(service)`: the handler wrapper. It records; it never exports.

Per invocation:

* API Gateway HTTP API v2 events: a SERVER span `"{method} {route template}"` continuing the
  caller's trace (`traceparent`/`tracestate`/`X-Amzn-Trace-Id`), HTTP semantic attributes,
  ERROR status for 5xx, and the HTTP metrics recorded exactly once (errors included; an
  exception counts as 500 and is re-raised);
* state-machine task events (a `"step"` key): a step span (INTERNAL, child of the
  `trace_context` carrier) holding a SERVER span named after the service; `annotate_step()`
  writes on the step span; exceptions mark both spans ERROR and are re-raised;
* anything else: one span named after the service.

Sampling is decided when a span starts, before any attribute is built: an unsampled span
gets no attributes (they are built by a callable only for recording spans) and nothing is
redacted for it. Log lines carry trace_id/span_id while the invocation runs; per-invocation
log keys are cleared afterwards. Then the container takes over: on Lambda the extension
exports after the response has been posted; elsewhere a bounded inline flush runs.
"""

from __future__ import annotations

import base64
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from payments.observability import logging as _logging
from payments.observability import metrics, tracing
from payments.observability.container import Observability, container
from payments.observability.redaction import redact_attributes, redact_text

Handler = Callable[[dict[str, Any], Any], Any]
Attributes = Mapping[str, Any] | Callable[[], Mapping[str, Any]]

_PAYMENT_ATTRIBUTES = ("merchant_id", "amount", "currency", "payment_no")


def instrument(service: str) -> Callable[[Handler], Handler]:
    """Decorate a Lambda handler with tracing, metrics, correlated logs and telemetry export."""

    def decorate(handler: Handler) -> Handler:
        obs = container()
        # Decoration runs while Lambda imports the handler module, i.e. during INIT: the
        # only moment an internal extension may register.
        obs.register_extension()

        @functools.wraps(handler)
        def wrapper(event: dict[str, Any], context: Any) -> Any:
            initialise(obs, service, context)
            cold_start, obs.cold_start = obs.cold_start, False
            request_id = str(getattr(context, "aws_request_id", "") or "")
            _logging.logger.append_keys(
                function_request_id=request_id or None, cold_start=cold_start
            )
            invocation = {"faas.coldstart": cold_start, "faas.invocation_id": request_id}
            try:
                return _dispatch(service, handler, event, context, invocation)
            finally:
                _logging.clear_invocation_keys()
                # The runtime's frame that called us: once it has returned, the response is
                # posted (the extension waits for exactly that before exporting).
                obs.invocation_finished(request_id, sys._getframe(1))

        return wrapper

    return decorate


def _dispatch(
    service: str, handler: Handler, event: Any, context: Any, invocation: Mapping[str, Any]
) -> Any:
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


def initialise(obs: Observability, service: str, context: Any) -> None:
    """Once per execution environment: tracing, metrics, logger, cold-start metric."""
    if obs.initialised:
        return
    with obs._lock:
        if obs.initialised:
            return
        obs.setup_tracing(service)  # an invalid configuration fails here, loudly
        function_name = str(getattr(context, "function_name", "") or service)
        try:
            metrics.configure(function_name=function_name, service=service)
            metrics.COLD_STARTS_TOTAL.inc(function=function_name)
        except Exception:  # pragma: no cover - metrics must never fail an invocation
            _logging.logger.exception("metrics configuration failed")
        _logging.configure(service)
        obs.initialised = True


# --------------------------------------------------------------------------- spans


@contextmanager
def _span(
    name: str,
    kind: SpanKind,
    attributes: Attributes,
    context: Any = None,
) -> Iterator[trace.Span]:
    """A current span whose exceptions are recorded (redacted) as ERROR and re-raised.

    The sampler runs first (start_span without attributes); only a recording span gets its
    attributes built and redacted.
    """
    span = container().tracer.start_span(name, context=context, kind=kind)
    if span.is_recording():
        values = attributes() if callable(attributes) else attributes
        span.set_attributes(redact_attributes(values))
    with trace.use_span(
        span, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield span
        except BaseException as exc:
            _record_error(span, exc)
            raise


def _record_error(span: trace.Span, exc: BaseException) -> None:
    if not span.is_recording():
        return  # formatting and redacting a stack trace nobody exports is pure waste
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

    def attributes() -> dict[str, Any]:
        return {
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
            if span.is_recording():
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

    def step_attributes() -> dict[str, Any]:
        values: dict[str, Any] = {"step": step}
        if isinstance(payment, Mapping):
            values.update(
                {
                    key: payment[key]
                    for key in _PAYMENT_ATTRIBUTES
                    if isinstance(payment.get(key), str | int | float | bool)
                }
            )
        return values

    with (
        _span(step, SpanKind.INTERNAL, step_attributes, context=parent) as step_span,
        tracing.step_span(step_span),
        _span(service, SpanKind.SERVER, invocation),
    ):
        return handler(event, context)
