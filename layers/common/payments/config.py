"""Environment settings, validated once per execution environment (cold start)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_ENV_PREFIXLESS = {
    "payments_table": "PAYMENTS_TABLE",
    "idempotency_table": "IDEMPOTENCY_TABLE",
    "state_machine_arn": "STATE_MACHINE_ARN",
    "stripe_api_base": "STRIPE_API_BASE",
    "stripe_api_key": "STRIPE_API_KEY",
    "stripe_connect_timeout": "STRIPE_CONNECT_TIMEOUT_SECONDS",
    "stripe_read_timeout": "STRIPE_READ_TIMEOUT_SECONDS",
    "stripe_max_retries": "STRIPE_MAX_RETRIES",
    "breaker_failure_threshold": "BREAKER_FAILURE_THRESHOLD",
    "breaker_reset_seconds": "BREAKER_RESET_SECONDS",
    "breaker_sync_seconds": "BREAKER_SYNC_SECONDS",
    "reconcile_grace_seconds": "RECONCILE_GRACE_SECONDS",
    "reconcile_no_charge_after_seconds": "RECONCILE_NO_CHARGE_AFTER_SECONDS",
    "reconcile_search_freshness_seconds": "RECONCILE_SEARCH_FRESHNESS_SECONDS",
    "reconcile_backoff_seconds": "RECONCILE_BACKOFF_SECONDS",
    "reconcile_backoff_max_seconds": "RECONCILE_BACKOFF_MAX_SECONDS",
    "reconcile_max_attempts": "RECONCILE_MAX_ATTEMPTS",
    "reconcile_batch_size": "RECONCILE_BATCH_SIZE",
    "reconcile_late_charge": "RECONCILE_LATE_CHARGE",
    "stripe_webhook_secrets": "STRIPE_WEBHOOK_SECRETS",
    "webhook_tolerance_seconds": "WEBHOOK_TOLERANCE_SECONDS",
    "risk_blocked_countries": "RISK_BLOCKED_COUNTRIES",
    "risk_review_amount_minor": "RISK_REVIEW_AMOUNT_MINOR",
    "risk_velocity_limit": "RISK_VELOCITY_LIMIT",
    "risk_velocity_window_seconds": "RISK_VELOCITY_WINDOW_SECONDS",
    "idempotency_ttl_seconds": "IDEMPOTENCY_TTL_SECONDS",
    "signature_tolerance_seconds": "SIGNATURE_TOLERANCE_SECONDS",
}

PositiveFloat = Annotated[float, Field(gt=0)]


class Settings(BaseModel):
    """Everything a function reads from its environment. Unknown keys are ignored."""

    model_config = ConfigDict(frozen=True)

    payments_table: str = "payments"
    idempotency_table: str = "payments-idempotency"
    state_machine_arn: str = ""
    stripe_api_base: str = "https://api.stripe.com"
    stripe_api_key: str = Field(default="", repr=False)
    stripe_connect_timeout: PositiveFloat = 2.0
    stripe_read_timeout: PositiveFloat = 5.0
    stripe_max_retries: Annotated[int, Field(ge=0, le=5)] = 2
    breaker_failure_threshold: Annotated[int, Field(ge=1)] = 5
    breaker_reset_seconds: PositiveFloat = 30.0
    breaker_sync_seconds: Annotated[float, Field(ge=0)] = 2.0
    # Reconciliation (SPEC §4). A payment younger than the grace period is still in flight.
    # "No charge" needs the payment older than `no_charge_after` (no request of its
    # workflow can still be running: 25 s workflow budget plus the provider's own delay)
    # and two lookups that found nothing, spaced wider than the provider's search
    # freshness (Stripe: about a minute).
    reconcile_grace_seconds: Annotated[float, Field(ge=0)] = 60.0
    reconcile_no_charge_after_seconds: Annotated[float, Field(ge=0)] = 120.0
    reconcile_search_freshness_seconds: Annotated[float, Field(ge=0)] = 90.0
    reconcile_backoff_seconds: Annotated[float, Field(ge=0)] = 30.0
    reconcile_backoff_max_seconds: Annotated[float, Field(ge=0)] = 3600.0
    reconcile_max_attempts: Annotated[int, Field(ge=1)] = 30
    reconcile_batch_size: Annotated[int, Field(ge=1, le=500)] = 50
    # A charge found for a payment already failed: refund it at once, or flag it only.
    reconcile_late_charge: Literal["refund", "flag"] = "refund"
    stripe_webhook_secrets: tuple[str, ...] = Field(default=(), repr=False)
    webhook_tolerance_seconds: Annotated[int, Field(ge=1)] = 300
    risk_blocked_countries: frozenset[str] = frozenset({"KP", "IR", "SY", "CU"})
    risk_review_amount_minor: Annotated[int, Field(ge=1)] = 500_000
    risk_velocity_limit: Annotated[int, Field(ge=1)] = 10
    risk_velocity_window_seconds: Annotated[int, Field(ge=1)] = 60
    idempotency_ttl_seconds: Annotated[int, Field(ge=60)] = 86_400
    signature_tolerance_seconds: Annotated[int, Field(ge=1)] = 300

    @field_validator("risk_blocked_countries", mode="before")
    @classmethod
    def _split_countries(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(c.strip().upper() for c in value.split(",") if c.strip())
        return value

    @field_validator("stripe_webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        # Several secrets during a rotation: every one is tried.
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("stripe_api_base")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Settings:
        source = os.environ if environ is None else environ
        values = {field: source[name] for field, name in _ENV_PREFIXLESS.items() if name in source}
        return cls.model_validate(values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this execution environment, read and validated once."""
    return Settings.from_environ()
