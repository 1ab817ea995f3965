"""Per-execution-environment wiring: every store, client and breaker is built here, once,
from the settings, and `reset()` forgets them all. Each is imported when first built: a
function's cold start loads only the stores it uses.

Tests inject through `use_channel` instead of patching private names.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING

from payments.config import get_settings

if TYPE_CHECKING:
    from payments.channel import ChannelClient
    from payments.channel.breaker import CircuitBreaker
    from payments.logic.reconcile import Reconciler
    from payments.store.breakers import BreakerStore
    from payments.store.keys import ApiKeyStore
    from payments.store.orders import OrderStore
    from payments.store.payments import PaymentStore
    from payments.store.velocity import VelocityStore
    from payments.store.webhooks import WebhookEventStore
    from payments.store.workflow import PaymentWorkflow

_lock = threading.Lock()
_channels: dict[str, ChannelClient] = {}
_breakers: dict[str, CircuitBreaker] = {}


@lru_cache(maxsize=1)
def payment_store() -> PaymentStore:
    from payments.store.payments import PaymentStore

    return PaymentStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def order_store() -> OrderStore:
    from payments.store.orders import OrderStore

    return OrderStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def api_keys() -> ApiKeyStore:
    from payments.store.keys import ApiKeyStore

    return ApiKeyStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def velocity_store() -> VelocityStore:
    from payments.store.velocity import VelocityStore

    return VelocityStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def breaker_store() -> BreakerStore:
    from payments.store.breakers import BreakerStore

    return BreakerStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def webhook_events() -> WebhookEventStore:
    from payments.store.webhooks import WebhookEventStore

    return WebhookEventStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def workflow() -> PaymentWorkflow:
    from payments.store.workflow import PaymentWorkflow

    return PaymentWorkflow(get_settings().state_machine_arn)


@lru_cache(maxsize=1)
def reconciler() -> Reconciler:
    from payments.channel import get_channel
    from payments.logic.reconcile import Reconciler

    return Reconciler(payment_store(), order_store(), get_channel, get_settings())


def breaker(name: str) -> CircuitBreaker:
    """The provider's circuit breaker in this environment, synced with the shared state."""
    with _lock:
        return _breaker(name)


def _breaker(name: str) -> CircuitBreaker:
    # Callers hold _lock. Breakers live apart from clients so the gateway and /health can
    # consult them without building an HTTP client.
    found = _breakers.get(name)
    if found is None:
        from payments.channel.breaker import CircuitBreaker

        settings = get_settings()
        found = _breakers[name] = CircuitBreaker(
            name,
            failure_threshold=settings.breaker_failure_threshold,
            reset_seconds=settings.breaker_reset_seconds,
            shared=breaker_store(),
            sync_seconds=settings.breaker_sync_seconds,
        )
    return found


def channel(name: str) -> ChannelClient:
    """The provider client, built once so its connection pool and breaker survive warm
    invocations. `name` is a supported channel (payments.channel.get_channel checks)."""
    with _lock:
        client = _channels.get(name)
        if client is None:
            from payments.channel.stripe import StripeClient

            client = StripeClient.from_settings(get_settings(), breaker=_breaker(name))
            _channels[name] = client
        return client


def use_channel(name: str, client: ChannelClient) -> None:
    """Tests: serve `client` for `name` until the next reset."""
    with _lock:
        _channels[name] = client


def reset_channels() -> None:
    with _lock:
        _channels.clear()
        _breakers.clear()


def reset() -> None:
    """Forget everything built from settings (tests change the environment)."""
    from payments import idempotency, observability
    from payments.store import clients

    for factory in (
        payment_store,
        order_store,
        api_keys,
        velocity_store,
        breaker_store,
        webhook_events,
        reconciler,
        workflow,
        get_settings,
    ):
        factory.cache_clear()
    reset_channels()
    idempotency.reset()
    clients.reset()
    observability.reset()  # settings, tracing set-up, export pipeline, metrics
