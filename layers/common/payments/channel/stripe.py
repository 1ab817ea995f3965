"""Stripe client: PaymentIntents (confirm=true) and Refunds over the real REST wire format.

Every POST carries an Idempotency-Key, which is what makes retrying it safe: Stripe replays
the stored result instead of charging twice. So we retry (bounded, with jittered backoff)
on connection errors, timeouts, 5xx and 429 only, and never on other 4xx.
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
from urllib.parse import urlsplit

import requests
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from payments.channel import ChannelError, ChargeResult, RefundResult
from payments.channel.breaker import CircuitBreaker
from payments.config import Settings
from payments.errors import ChannelUnavailable

log = logging.getLogger(__name__)

API_VERSION = "2024-06-20"
# Stripe's refund `reason` enum; anything else is kept only as metadata.
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]


class _AttemptError(Exception):
    """One attempt got no usable answer; `retry_after` is the provider's hint, if any."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _BusyError(Exception):
    """409: another request with the same Idempotency-Key is still being processed."""


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
        self.timeout = (connect_timeout, read_timeout)
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
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()

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
    def breaker_state(self) -> str:
        return self.breaker.state

    @property
    def session(self) -> requests.Session:
        # Lazily, once: the pool (and its TLS connections) survives warm invocations.
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = requests.Session()
        return self._session

    # ---- public API ---------------------------------------------------------------------

    def charge(
        self,
        *,
        payment_no: str,
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
        }
        # Callers derive the key from payment_no so that a re-run of the whole step (not
        # just an HTTP retry) still can't charge twice; fall back to the same derivation.
        key = idempotency_key or f"charge-{payment_no}"
        reply = self._post("/v1/payment_intents", form, key, _charge_decline)
        decline = _charge_decline(reply)
        if decline is not None:
            intent = reply.body.get("error", {}).get("payment_intent") or reply.body
            ref = intent.get("id") if isinstance(intent, dict) else None
            return ChargeResult(outcome="declined", channel_reference=ref, decline_code=decline)
        return ChargeResult(
            outcome="succeeded", channel_reference=str(reply.body["id"]), decline_code=None
        )

    def refund(
        self,
        *,
        charge_reference: str,
        amount: int,
        idempotency_key: str,
        reason: str | None = None,
    ) -> RefundResult:
        form = {"payment_intent": charge_reference, "amount": str(amount)}
        if reason in REFUND_REASONS:
            form["reason"] = reason
        elif reason:
            # Free text is not a Stripe reason; keep it for humans (Stripe caps values at 500).
            form["metadata[reason]"] = reason[:500]
        reply = self._post("/v1/refunds", form, idempotency_key, _refund_decline)
        decline = _refund_decline(reply)
        ref = reply.body.get("id") if reply.status == 200 else None
        if decline is not None:
            return RefundResult(outcome="declined", channel_reference=ref, decline_code=decline)
        return RefundResult(outcome="succeeded", channel_reference=ref, decline_code=None)

    # ---- transport ----------------------------------------------------------------------

    def _post(
        self,
        path: str,
        form: Mapping[str, str],
        idempotency_key: str,
        decline_of: Callable[[_Reply], str | None],
    ) -> _Reply:
        self.breaker.acquire()
        try:
            reply = self._post_with_retries(path, form, idempotency_key, decline_of)
        except ChannelUnavailable:
            self.breaker.record_failure()
            raise
        except _BusyError as exc:
            self.breaker.record_success()  # the provider answered: it is up
            raise ChannelUnavailable(str(exc), retry_after=1) from exc
        except ChannelError:
            self.breaker.record_success()  # the provider answered: it is up
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return reply

    def _post_with_retries(
        self,
        path: str,
        form: Mapping[str, str],
        idempotency_key: str,
        decline_of: Callable[[_Reply], str | None],
    ) -> _Reply:
        last: _AttemptError | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self._delay(attempt, last))
            try:
                return self._attempt(path, form, idempotency_key, attempt, decline_of)
            except _AttemptError as exc:
                last = exc
                log.warning(
                    "stripe call failed, %s",
                    "retrying" if attempt < self.max_retries else "giving up",
                    extra={"path": path, "attempt": attempt, "reason": str(exc)},
                )
        assert last is not None
        hint = last.retry_after
        raise ChannelUnavailable(
            "The stripe channel is unavailable; retry later.",
            retry_after=max(1, math.ceil(hint)) if hint else 5,
        )

    def _delay(self, attempt: int, last: _AttemptError | None) -> float:
        # Exponential backoff with "equal jitter" so synchronized clients spread out,
        # but never less than the provider's (capped) Retry-After.
        backoff = self._backoff_base * 2.0 ** (attempt - 1)
        jittered = backoff / 2 + random.uniform(0, backoff / 2)  # noqa: S311 - not crypto
        hint = min(last.retry_after, self._max_retry_after) if last and last.retry_after else 0.0
        return max(jittered, hint)

    def _attempt(
        self,
        path: str,
        form: Mapping[str, str],
        idempotency_key: str,
        attempt: int,
        decline_of: Callable[[_Reply], str | None],
    ) -> _Reply:
        url = self.base_url + path
        # One CLIENT span per attempt, as the HTTP semantic conventions ask for resends.
        with self._tracer.start_as_current_span(
            f"stripe: POST {path}",
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "http.request.method": "POST",
                "url.full": url,
                "server.address": self._host,
                "server.port": self._port,
                "peer.service": "stripe",
            },
        ) as span:
            if attempt:
                span.set_attribute("http.request.resend_count", attempt)
            headers = {
                "Authorization": f"Bearer {self._api_key}",
                "Idempotency-Key": idempotency_key,
                "Stripe-Version": self._api_version,
                "Accept": "application/json",
            }
            propagate.inject(headers)  # traceparent of this client span
            try:
                resp = self.session.post(url, data=form, headers=headers, timeout=self.timeout)
            except requests.Timeout as exc:
                _fail(span, exc, "timeout")
                raise _AttemptError("timeout") from exc
            except requests.RequestException as exc:
                _fail(span, exc, type(exc).__name__)
                raise _AttemptError(type(exc).__name__) from exc

            span.set_attribute("http.response.status_code", resp.status_code)
            request_id = resp.headers.get("Request-Id")
            if request_id:
                span.set_attribute("stripe.request_id", request_id)
            if resp.status_code in _RETRYABLE_STATUS:
                span.set_attribute("error.type", str(resp.status_code))
                span.set_status(Status(StatusCode.ERROR, f"HTTP {resp.status_code}"))
                if resp.headers.get("Stripe-Should-Retry") == "false":
                    # Stripe says a retry cannot help; still "unavailable" to the merchant.
                    raise ChannelUnavailable("The stripe channel is unavailable; retry later.")
                raise _AttemptError(f"HTTP {resp.status_code}", _retry_after(resp))
            reply = _Reply(resp.status_code, _json(resp))
            decline = decline_of(reply) if resp.status_code in (200, 400, 402) else None
            if decline is not None:
                span.set_attribute("payment.decline_code", decline)
                if resp.status_code >= 400:
                    # HTTP semantic conventions: a CLIENT span with a 4xx answer is an error.
                    span.set_attribute("error.type", str(resp.status_code))
                    span.set_status(Status(StatusCode.ERROR, f"declined: {decline}"))
                return reply
            if resp.status_code == 200:
                return reply
            err = reply.body.get("error") or {}
            span.set_attribute("error.type", str(resp.status_code))
            span.set_status(Status(StatusCode.ERROR, f"HTTP {resp.status_code}"))
            if resp.status_code == 409:
                # A concurrent request holds this Idempotency-Key: transient, and retrying
                # at once would just collide again. Tell the caller to come back.
                raise _BusyError("A request with this Idempotency-Key is still in flight.")
            log.error(
                "stripe rejected the request",
                extra={"path": path, "status": resp.status_code, "stripe_error": err.get("type")},
            )
            raise ChannelError(
                details=[{"provider_status": resp.status_code, "type": err.get("type")}]
            )


def _fail(span: trace.Span, exc: BaseException, error_type: str) -> None:
    span.record_exception(exc)
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


def _retry_after(resp: requests.Response) -> float | None:
    try:
        value = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def _json(resp: requests.Response) -> dict[str, Any]:
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
    last_error = reply.body.get("last_payment_error") or {}
    return str(last_error.get("decline_code") or last_error.get("code") or f"intent_{status}")


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
    # "pending"/"requires_action" mean Stripe accepted the refund; it settles later.
    return None
