"""Payment-provider ("channel") clients behind one small interface.

A decline is a result (`outcome="declined"`), not an exception. Exceptions are reserved for
"we could not get an answer" (`ChannelUnavailable`, 503, retry later) and "the provider
rejected our request as malformed or unauthorised" (`ChannelError`, 502, a config bug).
"""

from __future__ import annotations

import threading
from typing import Literal, Protocol

from pydantic import BaseModel

from payments.channel.breaker import CircuitBreaker
from payments.config import get_settings
from payments.errors import PaymentError, UnsupportedChannel

__all__ = [
    "ChannelClient",
    "ChannelError",
    "ChargeResult",
    "RefundResult",
    "breaker_states",
    "get_channel",
    "reset_channels",
]

SUPPORTED = ("stripe",)


class ChargeResult(BaseModel):
    outcome: Literal["succeeded", "declined"]
    channel_reference: str | None
    decline_code: str | None


class RefundResult(BaseModel):
    outcome: Literal["succeeded", "declined"]
    channel_reference: str | None
    decline_code: str | None


class ChannelError(PaymentError):
    """The provider refused the request itself (bad key, invalid parameters): not a decline."""

    code, status = "channel_error", 502
    default_message = "The payment channel rejected the request."


class ChannelClient(Protocol):
    def charge(
        self,
        *,
        payment_no: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
    ) -> ChargeResult: ...

    def refund(
        self,
        *,
        charge_reference: str,
        amount: int,
        idempotency_key: str,
        reason: str | None = None,
    ) -> RefundResult: ...


_clients: dict[str, ChannelClient] = {}
_breakers: dict[str, CircuitBreaker] = {}
_lock = threading.Lock()


def _breaker(name: str) -> CircuitBreaker:
    # Callers hold _lock. Breakers live apart from clients so /health can report them
    # without building an HTTP client.
    breaker = _breakers.get(name)
    if breaker is None:
        settings = get_settings()
        breaker = CircuitBreaker(
            name,
            failure_threshold=settings.breaker_failure_threshold,
            reset_seconds=settings.breaker_reset_seconds,
        )
        _breakers[name] = breaker
    return breaker


def get_channel(name: str) -> ChannelClient:
    """The client for `name`, built once per execution environment so its HTTP connection
    pool and circuit breaker survive across warm invocations."""
    if name not in SUPPORTED:
        raise UnsupportedChannel(details=[{"field": "channel", "value": name}])
    with _lock:
        client = _clients.get(name)
        if client is None:
            from payments.channel.stripe import StripeClient

            client = StripeClient.from_settings(get_settings(), breaker=_breaker(name))
            _clients[name] = client
        return client


def breaker_states() -> dict[str, str]:
    """Circuit-breaker state of every supported channel, for GET /health."""
    with _lock:
        return {name: _breaker(name).state for name in SUPPORTED}


def reset_channels() -> None:
    """Forget cached clients and breakers (tests, or after settings change)."""
    with _lock:
        _clients.clear()
        _breakers.clear()
