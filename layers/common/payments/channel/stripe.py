"""Stripe client: PaymentIntents (confirm=true), Refunds and their lookups over the real REST
wire format, with the outcome semantics of `payments.channel` (SPEC §4).

Every POST carries an Idempotency-Key, which is what makes retrying it safe: Stripe replays
the stored result instead of charging twice. So we retry (bounded, with jittered backoff)
on connection errors, timeouts, 5xx, 409 `idempotency_key_in_use` and 429 only, never on
other 4xx, and stop when Stripe says `Stripe-Should-Retry: false` (a saved 500 would only
replay). When every attempt failed, the outcome is `unavailable` only if no attempt can
have been executed (connection refused / connect timeout / 429); otherwise `unknown`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from payments.channel import (
    CallOutcome,
    ChannelError,
    ChargeResult,
    IntentState,
    LookupFailed,
    ProviderIntent,
    ProviderRefund,
    RefundResult,
)
from payments.channel.breaker import CircuitBreaker
from payments.config import Settings
from payments.errors import ChannelUnavailable
from payments.records import Failure

log = logging.getLogger(__name__)

API_VERSION = "2024-06-20"
# Stripe's refund `reason` enum; anything else is kept only as metadata.
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
_RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})
_PENDING_INTENT = frozenset({"processing", "requires_capture"})


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    route: str  # the span name's path: no object ids in span names
    data: Mapping[str, str]
    idempotency_key: str | None = None
    decline_of: Callable[[_Reply], str | None] | None = None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]


class _AttemptError(Exception):
    """One attempt got no usable answer.

    `maybe_executed`: the provider may have acted on it (so the call's outcome is unknown
    unless a later attempt gets an answer). `retry_after`: the provider's hint, if any.
    `retry`: False when the provider says a retry cannot help.
    """

    def __init__(
        self,
        reason: str,
        *,
        maybe_executed: bool,
        retry_after: float | None = None,
        retry: bool = True,
    ) -> None:
        super().__init__(reason)
        self.maybe_executed = maybe_executed
        self.retry_after = retry_after
        self.retry = retry


class _Unavailable(Exception):
    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Unknown(Exception):
    """The call may have been executed; only a lookup can tell."""


class StripeClient:
    """One instance per execution environment: it owns the pooled session and a breaker."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_retries: int = 2,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base: float = 0.05,
        max_retry_after: float = 2.0,
        tracer_provider: trace.TracerProvider | None = None,
        api_version: str = API_VERSION,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.max_retries = max_retries
        self.breaker = breaker or CircuitBreaker("stripe")
        self._sleep = sleep
        self._backoff_base = backoff_base
        self._max_retry_after = max_retry_after
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._api_version = api_version
        parts = urlsplit(self.base_url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._pool: urllib3.PoolManager | None = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"StripeClient(base_url={self.base_url!r})"

    @classmethod
    def from_settings(cls, settings: Settings, *, breaker: CircuitBreaker) -> StripeClient:
        return cls(
            base_url=settings.stripe_api_base,
            api_key=settings.stripe_api_key,
            connect_timeout=settings.stripe_connect_timeout,
            read_timeout=settings.stripe_read_timeout,
            max_retries=settings.stripe_max_retries,
            breaker=breaker,
        )

    @property
    def pool(self) -> urllib3.PoolManager:
        # Lazily, once: the pool (and its TLS connections) survives warm invocations. urllib3
        # rather than requests: botocore has loaded it already, while importing requests
        # costs a cold start an eighth of `import boto3` (README, cold start). No retries or
        # redirects of its own: every resend is decided here, with the same idempotency key.
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = urllib3.PoolManager(retries=False, timeout=self.timeout, maxsize=4)
        return self._pool

    # ---- calls that move money -----------------------------------------------------------

    def charge(
        self,
        *,
        payment_no: str,
        merchant_order_no: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
    ) -> ChargeResult:
        # Stripe takes minor units for every currency (zero-decimal ones such as JPY are
        # already their own minor unit), so the integer goes through unchanged.
        form = {
            "amount": str(amount),
            "currency": currency.lower(),
            "payment_method": payment_method,
            "confirm": "true",
            "payment_method_types[]": "card",
            "metadata[payment_no]": payment_no,
            "metadata[merchant_order_no]": merchant_order_no,
        }
        try:
            reply = self._post("/v1/payment_intents", form, idempotency_key, _charge_decline)
        except _Unavailable as exc:
            return ChargeResult(outcome=CallOutcome.UNAVAILABLE, failure=_unavailable(exc))
        except _Unknown as exc:
            return ChargeResult(outcome=CallOutcome.UNKNOWN, failure=_unknown(exc))
        except ChannelError as exc:
            return ChargeResult(outcome=CallOutcome.REJECTED, failure=_rejected(exc))
        decline = _charge_decline(reply)
        if decline is not None:
            intent = reply.body.get("error", {}).get("payment_intent") or reply.body
            ref = intent.get("id") if isinstance(intent, dict) else None
            return ChargeResult(
                outcome=CallOutcome.DECLINED, channel_reference=ref, decline_code=decline
            )
        return ChargeResult(outcome=CallOutcome.SUCCEEDED, channel_reference=str(reply.body["id"]))

    def refund(
        self,
        *,
        refund_no: str,
        payment_no: str,
        charge_reference: str,
        amount: int,
        idempotency_key: str,
        reason: str | None = None,
    ) -> RefundResult:
        form = {
            "payment_intent": charge_reference,
            "amount": str(amount),
            "metadata[refund_no]": refund_no,
            "metadata[payment_no]": payment_no,
        }
        if reason in REFUND_REASONS:
            form["reason"] = reason
        elif reason:
            # Free text is not a Stripe reason; keep it for humans (Stripe caps values at 500).
            form["metadata[reason]"] = reason[:500]
        try:
            reply = self._post("/v1/refunds", form, idempotency_key, _refund_decline)
        except _Unavailable as exc:
            return RefundResult(outcome=CallOutcome.UNAVAILABLE, failure=_unavailable(exc))
        except _Unknown as exc:
            return RefundResult(outcome=CallOutcome.UNKNOWN, failure=_unknown(exc))
        except ChannelError as exc:
            return RefundResult(outcome=CallOutcome.REJECTED, failure=_rejected(exc))
        decline = _refund_decline(reply)
        ref = reply.body.get("id") if reply.status == 200 else None
        if decline is not None:
            return RefundResult(
                outcome=CallOutcome.DECLINED, channel_reference=ref, decline_code=decline
            )
        if reply.body.get("status") == "pending":
            # Accepted but not settled: the money has not moved yet, reconciliation will see.
            return RefundResult(outcome=CallOutcome.UNKNOWN, channel_reference=ref)
        return RefundResult(outcome=CallOutcome.SUCCEEDED, channel_reference=ref)

    # ---- lookups (reconciliation) --------------------------------------------------------

    def find_intent(self, *, payment_no: str, reference: str | None) -> ProviderIntent | None:
        if reference:
            path = f"/v1/payment_intents/{reference}"
            body = self._get(path, {}, route="/v1/payment_intents/{id}", missing_ok=True)
            return None if body is None else _intent(body)
        query = f"metadata['payment_no']:'{_quote(payment_no)}'"
        body = self._get("/v1/payment_intents/search", {"query": query, "limit": "10"}) or {}
        found = [_intent(i) for i in body.get("data") or [] if isinstance(i, dict)]
        if len(found) > 1:
            # One idempotency key per payment makes this a provider-side anomaly: say so.
            log.error("several provider intents for one payment", extra={"count": len(found)})
        # The most advanced state wins: a charge that succeeded must never be overlooked.
        rank = {IntentState.SUCCEEDED: 0, IntentState.PENDING: 1, IntentState.FAILED: 2}
        return min(found, key=lambda i: rank[i.state], default=None)

    def find_refund(self, *, refund_no: str, charge_reference: str) -> ProviderRefund | None:
        params = {"payment_intent": charge_reference, "limit": "100"}
        body = self._get("/v1/refunds", params) or {}
        for item in body.get("data") or []:
            metadata = item.get("metadata") if isinstance(item, dict) else None
            if isinstance(metadata, dict) and metadata.get("refund_no") == refund_no:
                return _refund(item)
        return None

    # ---- transport ----------------------------------------------------------------------

    def _post(
        self,
        path: str,
        form: Mapping[str, str],
        idempotency_key: str,
        decline_of: Callable[[_Reply], str | None],
    ) -> _Reply:
        _admit(self.breaker, lambda exc: _Unavailable(str(exc), exc.retry_after))
        call = _Call("POST", path, path, form, idempotency_key, decline_of)
        maybe_executed = False
        last: _AttemptError | None = None
        try:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    self._sleep(self._delay(attempt, last))
                try:
                    reply = self._attempt(call, attempt)
                except _AttemptError as exc:
                    last, maybe_executed = exc, maybe_executed or exc.maybe_executed
                    self._log_attempt(path, attempt, exc)
                    if not exc.retry:
                        break
                    continue
                self.breaker.record_success()
                return reply
        except ChannelError:
            self.breaker.record_success()  # the provider answered: it is up
            raise
        except BaseException:
            self.breaker.release()
            raise
        assert last is not None
        self.breaker.record_failure()
        if maybe_executed:
            raise _Unknown(str(last))
        hint = math.ceil(last.retry_after) if last.retry_after else 1
        raise _Unavailable(str(last), max(hint, self.breaker.remaining_seconds(), 1))

    def _get(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        route: str | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """A read: safe to retry; no answer at all is LookupFailed; 404 is None if allowed."""

        def refuse(exc: ChannelUnavailable) -> Exception:
            return LookupFailed(str(exc))

        _admit(self.breaker, refuse)
        last: _AttemptError | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self._delay(attempt, last))
            try:
                reply = self._attempt(_Call("GET", path, route or path, params), attempt)
            except _AttemptError as exc:
                last = exc
                self._log_attempt(path, attempt, exc)
                continue
            except ChannelError as exc:
                self.breaker.record_success()
                if missing_ok and exc.details and exc.details[0].get("provider_status") == 404:
                    return None
                raise LookupFailed(f"{path}: {exc.message}") from exc
            self.breaker.record_success()
            return reply.body
        self.breaker.record_failure()
        raise LookupFailed(f"{path}: {last}")

    def _log_attempt(self, path: str, attempt: int, exc: _AttemptError) -> None:
        retrying = exc.retry and attempt < self.max_retries
        log.warning(
            "stripe call failed, %s",
            "retrying" if retrying else "giving up",
            extra={"path": path, "attempt": attempt, "reason": str(exc)},
        )

    def _delay(self, attempt: int, last: _AttemptError | None) -> float:
        # Exponential backoff with "equal jitter" so synchronized clients spread out,
        # but never less than the provider's (capped) Retry-After.
        backoff = self._backoff_base * 2.0 ** (attempt - 1)
        jittered = backoff / 2 + random.uniform(0, backoff / 2)  # noqa: S311 - not crypto
        hint = min(last.retry_after, self._max_retry_after) if last and last.retry_after else 0.0
        return max(jittered, hint)

    def _attempt(self, call: _Call, attempt: int) -> _Reply:
        url = self.base_url + call.path
        # One CLIENT span per attempt, as the HTTP semantic conventions ask for resends.
        with self._tracer.start_as_current_span(
            f"stripe: {call.method} {call.route}",
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "http.request.method": call.method,
                "url.full": url,
                "server.address": self._host,
                "server.port": self._port,
                "peer.service": "stripe",
            },
        ) as span:
            if attempt:
                span.set_attribute("http.request.resend_count", attempt)
            resp = self._send(span, call, url)
            return self._read(span, call, resp)

    def _send(self, span: trace.Span, call: _Call, url: str) -> urllib3.BaseHTTPResponse:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Stripe-Version": self._api_version,
            "Accept": "application/json",
        }
        if call.idempotency_key:
            headers["Idempotency-Key"] = call.idempotency_key
        propagate.inject(headers)  # traceparent of this client span
        try:
            if call.method == "GET":
                return self.pool.request("GET", url, fields=call.data, headers=headers)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            return self.pool.request("POST", url, body=urlencode(call.data), headers=headers)
        except NewConnectionError as exc:  # first: urllib3 2 derives it from ConnectTimeoutError
            _fail(span, exc, "connection_refused")
            raise _AttemptError("connection refused", maybe_executed=False) from exc
        except ConnectTimeoutError as exc:
            _fail(span, exc, "connect_timeout")
            raise _AttemptError("connect timeout", maybe_executed=False) from exc
        except Urllib3TimeoutError as exc:  # the request was sent: it may have run
            _fail(span, exc, "timeout")
            raise _AttemptError("timeout", maybe_executed=True) from exc
        except (HTTPError, OSError) as exc:
            never = _never_connected(exc)
            _fail(span, exc, "connection_refused" if never else type(exc).__name__)
            reason = "connection refused" if never else "connection lost"
            raise _AttemptError(reason, maybe_executed=not never) from exc

    def _read(self, span: trace.Span, call: _Call, resp: urllib3.BaseHTTPResponse) -> _Reply:
        span.set_attribute("http.response.status_code", resp.status)
        request_id = resp.headers.get("Request-Id")
        if request_id:
            span.set_attribute("stripe.request_id", request_id)
        if resp.status in _RETRYABLE_STATUS:
            span.set_attribute("error.type", str(resp.status))
            span.set_status(Status(StatusCode.ERROR, f"HTTP {resp.status}"))
            should_retry = resp.headers.get("Stripe-Should-Retry")
            raise _AttemptError(
                f"HTTP {resp.status}",
                # Stripe executes nothing for a 429; a 5xx or a key held by another request
                # may mean the operation ran (or is running).
                maybe_executed=resp.status != 429,
                retry_after=_retry_after(resp),
                retry=should_retry != "false",
            )
        reply = _Reply(resp.status, _json(resp))
        decline_of = call.decline_of
        decline = decline_of(reply) if decline_of and resp.status in (200, 400, 402) else None
        if decline is not None:
            span.set_attribute("payment.decline_code", decline)
            if resp.status >= 400:
                # HTTP semantic conventions: a CLIENT span with a 4xx answer is an error.
                span.set_attribute("error.type", str(resp.status))
                span.set_status(Status(StatusCode.ERROR, f"declined: {decline}"))
            return reply
        if resp.status == 200:
            return reply
        err = reply.body.get("error") or {}
        span.set_attribute("error.type", str(resp.status))
        span.set_status(Status(StatusCode.ERROR, f"HTTP {resp.status}"))
        if resp.status != 404:
            log.error(
                "stripe rejected the request",
                extra={
                    "path": call.route,
                    "status": resp.status,
                    "stripe_error": err.get("type"),
                },
            )
        raise ChannelError(details=[{"provider_status": resp.status, "type": err.get("type")}])


def _admit(breaker: CircuitBreaker, make: Callable[[ChannelUnavailable], Exception]) -> None:
    """Breaker admission, "circuit open" mapped to the caller's own exception type."""
    try:
        breaker.acquire()
    except ChannelUnavailable as exc:
        raise make(exc) from None


def _unavailable(exc: _Unavailable) -> Failure:
    return Failure(code="channel_unavailable", retry_after=exc.retry_after, message=str(exc))


def _unknown(exc: _Unknown) -> Failure:
    return Failure(code="outcome_unknown", message=str(exc))


def _rejected(exc: ChannelError) -> Failure:
    return Failure(code="channel_error", message=exc.message)


def _never_connected(exc: BaseException) -> bool:
    """True when the connection was never established (so nothing was sent)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NewConnectionError | ConnectTimeoutError | ConnectionRefusedError):
            return True
        stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        stack.extend(a for a in current.args if isinstance(a, BaseException))
    return False


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _fail(span: trace.Span, exc: BaseException, error_type: str) -> None:
    span.record_exception(exc)
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


def _retry_after(resp: urllib3.BaseHTTPResponse) -> float | None:
    try:
        value = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def _json(resp: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    try:
        body = resp.json()
    except (ValueError, json.JSONDecodeError) as exc:
        raise ChannelError("The payment channel sent an unreadable response.") from exc
    if not isinstance(body, dict):
        raise ChannelError("The payment channel sent an unreadable response.")
    return body


def _error_code(body: dict[str, Any]) -> str:
    err = body.get("error") or {}
    return str(err.get("decline_code") or err.get("code") or "card_declined")


def _intent_decline(intent: Mapping[str, Any]) -> str:
    last_error = intent.get("last_payment_error") or {}
    status = intent.get("status")
    return str(last_error.get("decline_code") or last_error.get("code") or f"intent_{status}")


def _charge_decline(reply: _Reply) -> str | None:
    """The decline code of a PaymentIntent reply, or None if it succeeded / is no decline."""
    if reply.status == 402:
        return _error_code(reply.body)
    if reply.status == 400:
        err = reply.body.get("error") or {}
        # A bad payment_method token is the payer's problem, not our configuration.
        if err.get("param") == "payment_method":
            return str(err.get("code") or "invalid_payment_method")
        return None
    status = reply.body.get("status")
    if status == "succeeded":
        return None
    if status == "requires_action":
        return "authentication_required"  # 3-D Secure needs the payer; we can't complete it
    return _intent_decline(reply.body)


def _refund_decline(reply: _Reply) -> str | None:
    if reply.status == 402:
        return _error_code(reply.body)
    if reply.status == 400:
        code = (reply.body.get("error") or {}).get("code")
        # Stripe refusing the refund itself (already refunded, too large) is a refund
        # failure for the merchant; other 400s are our bug.
        if code in ("charge_already_refunded", "amount_too_large"):
            return str(code)
        return None
    if reply.body.get("status") in ("failed", "canceled"):
        return str(reply.body.get("failure_reason") or "refund_failed")
    return None


def _intent(body: Mapping[str, Any]) -> ProviderIntent:
    status = str(body.get("status") or "")
    if status == "succeeded":
        state, decline = IntentState.SUCCEEDED, None
    elif status in _PENDING_INTENT:
        state, decline = IntentState.PENDING, None
    else:
        # requires_payment_method (declined), canceled, requires_confirmation (never
        # confirmed), requires_action (3-D Secure we never complete): no money moved.
        state = IntentState.FAILED
        decline = "authentication_required" if status == "requires_action" else None
        decline = decline or _intent_decline(body)
    metadata = body.get("metadata") or {}
    return ProviderIntent(
        id=str(body.get("id")),
        state=state,
        amount=int(body.get("amount") or 0),
        currency=str(body.get("currency") or "").upper(),
        payment_no=metadata.get("payment_no"),
        decline_code=decline,
    )


def _refund(body: Mapping[str, Any]) -> ProviderRefund:
    status = str(body.get("status") or "")
    if status == "succeeded":
        state = IntentState.SUCCEEDED
    elif status in ("failed", "canceled"):
        state = IntentState.FAILED
    else:
        state = IntentState.PENDING
    return ProviderRefund(
        id=str(body.get("id")),
        state=state,
        amount=int(body.get("amount") or 0),
        refund_no=(body.get("metadata") or {}).get("refund_no"),
        failure_reason=body.get("failure_reason"),
    )
