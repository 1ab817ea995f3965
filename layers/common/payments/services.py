"""Per-execution-environment wiring: stores and workflow built once from the settings."""

from __future__ import annotations

from functools import lru_cache

from payments.config import get_settings
from payments.store.keys import ApiKeyStore
from payments.store.orders import OrderStore
from payments.store.payments import PaymentStore
from payments.store.velocity import VelocityStore
from payments.store.workflow import PaymentWorkflow


@lru_cache(maxsize=1)
def payment_store() -> PaymentStore:
    return PaymentStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def order_store() -> OrderStore:
    return OrderStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def api_keys() -> ApiKeyStore:
    return ApiKeyStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def velocity_store() -> VelocityStore:
    return VelocityStore(get_settings().payments_table)


@lru_cache(maxsize=1)
def workflow() -> PaymentWorkflow:
    return PaymentWorkflow(get_settings().state_machine_arn)


def reset() -> None:
    """Forget everything built from settings (tests change the environment)."""
    from payments import idempotency, observability
    from payments.config import get_settings as settings
    from payments.store import clients

    for factory in (payment_store, order_store, api_keys, velocity_store, workflow, settings):
        factory.cache_clear()
    idempotency.reset()
    clients.reset()
    observability.reset()  # settings, tracing set-up, export pipeline, metrics
