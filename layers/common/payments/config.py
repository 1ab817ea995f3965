"""Environment settings, validated once per execution environment (cold start).

`Settings` is a frozen stdlib dataclass checked by msgspec (ranges as `msgspec.Meta`
constraints, environment strings converted to numbers): importing pydantic would cost
every cold start of every function far more than reading the settings does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Literal

import msgspec

from payments.records import invalid_field

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
# Never echoed in an error message.
_SECRETS = frozenset({"stripe_api_key", "stripe_webhook_secrets"})

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything a function reads from its environment. Unknown keys are ignored.

    Build validated settings with `from_environ` (environment variables) or `validate`
    (field names); the bare constructor checks nothing.
    """

    payments_table: str = "payments"
    idempotency_table: str = "payments-idempotency"
    state_machine_arn: str = ""
    stripe_api_base: str = "https://api.stripe.com"
    stripe_api_key: str = dataclasses.field(default="", repr=False)
    stripe_connect_timeout: PositiveFloat = 2.0
    stripe_read_timeout: PositiveFloat = 5.0
    stripe_max_retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2
    breaker_failure_threshold: PositiveInt = 5
    breaker_reset_seconds: PositiveFloat = 30.0
    breaker_sync_seconds: NonNegativeFloat = 2.0
    # Reconciliation (SPEC §4). A payment younger than the grace period is still in flight.
    # "No charge" needs the payment older than `no_charge_after` (no request of its
    # workflow can still be running: 25 s workflow budget plus the provider's own delay)
    # and two lookups that found nothing, spaced wider than the provider's search
    # freshness (Stripe: about a minute).
    reconcile_grace_seconds: NonNegativeFloat = 60.0
    reconcile_no_charge_after_seconds: NonNegativeFloat = 120.0
    reconcile_search_freshness_seconds: NonNegativeFloat = 90.0
    reconcile_backoff_seconds: NonNegativeFloat = 30.0
    reconcile_backoff_max_seconds: NonNegativeFloat = 3600.0
    reconcile_max_attempts: PositiveInt = 30
    reconcile_batch_size: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50
    # A charge found for a payment already failed: refund it at once, or flag it only.
    reconcile_late_charge: Literal["refund", "flag"] = "refund"
    # Several secrets during a rotation: every one is tried.
    stripe_webhook_secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    webhook_tolerance_seconds: PositiveInt = 300
    risk_blocked_countries: frozenset[str] = frozenset({"KP", "IR", "SY", "CU"})
    risk_review_amount_minor: PositiveInt = 500_000
    risk_velocity_limit: PositiveInt = 10
    risk_velocity_window_seconds: PositiveInt = 60
    idempotency_ttl_seconds: Annotated[int, msgspec.Meta(ge=60)] = 86_400
    signature_tolerance_seconds: PositiveInt = 300

    @classmethod
    def validate(cls, values: Mapping[str, object]) -> Settings:
        """Settings from field names to values; strings are converted ("5" for an int,
        "KP, ir" for the countries, comma-separated webhook secrets), unknown keys are
        ignored. An invalid value raises ValueError naming the field."""
        return _convert(values, {})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment; an invalid value raises ValueError naming its
        variable."""
        source = os.environ if environ is None else environ
        values = {field: source[name] for field, name in _ENV_PREFIXLESS.items() if name in source}
        return _convert(values, _ENV_PREFIXLESS)


def _prepare(values: Mapping[str, object]) -> dict[str, object]:
    """The conversions msgspec does not do: comma-separated lists, no trailing slash."""
    prepared = dict(values)
    countries = prepared.get("risk_blocked_countries")
    if isinstance(countries, str):
        prepared["risk_blocked_countries"] = frozenset(
            c.strip().upper() for c in countries.split(",") if c.strip()
        )
    secrets = prepared.get("stripe_webhook_secrets")
    if isinstance(secrets, str):
        prepared["stripe_webhook_secrets"] = tuple(
            s.strip() for s in secrets.split(",") if s.strip()
        )
    base = prepared.get("stripe_api_base")
    if isinstance(base, str):
        prepared["stripe_api_base"] = base.rstrip("/")
    return prepared


def _convert(values: Mapping[str, object], names: Mapping[str, str]) -> Settings:
    try:
        return msgspec.convert(_prepare(values), Settings, strict=False)
    except msgspec.ValidationError as exc:
        key, message = invalid_field(exc)
        if key not in values:  # not one field's value (never from the environment)
            raise ValueError(f"invalid settings: {exc}") from None
        shown = "<hidden>" if key in _SECRETS else repr(values[key])
        raise ValueError(f"{names.get(key, key)}={shown} is invalid: {message}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this execution environment, read and validated once."""
    return Settings.from_environ()
