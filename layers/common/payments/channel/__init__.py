"""Payment-provider ("channel") clients behind one small interface.

Every provider call ends in exactly one outcome (SPEC §4, "never lie about money"):

* an answer from the provider — `succeeded` or `declined` — is final;
* `unavailable`: the request provably never reached the provider (circuit open, connection
  refused, rate-limited before execution) — final, nothing happened, retry later;
* `rejected`: the provider refused the request itself (bad key, invalid parameters) — final,
  nothing happened, a configuration bug;
* `unknown`: the request may have been executed (timeout, 5xx, connection lost after
  sending, 409 `idempotency_key_in_use`) — never a failure: keep it, reconcile it.

Lookups (`find_intent`, `find_refund`) re-read the provider's state for reconciliation and
raise `LookupFailed` when they get no answer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from payments.errors import PaymentError, UnsupportedChannel
from payments.records import Failure, Record

__all__ = [
    "SUPPORTED",
    "CallOutcome",
    "ChannelClient",
    "ChannelError",
    "ChargeResult",
    "Failure",
    "LookupFailed",
    "ProviderIntent",
    "ProviderRefund",
    "RefundResult",
    "get_channel",
    "reset_channels",
]

SUPPORTED = ("stripe",)


class CallOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    UNAVAILABLE = "unavailable"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


FINAL_FAILURES = frozenset({CallOutcome.DECLINED, CallOutcome.UNAVAILABLE, CallOutcome.REJECTED})


class ChargeResult(Record, frozen=True, kw_only=True):
    outcome: CallOutcome
    channel_reference: str | None = None
    decline_code: str | None = None
    failure: Failure | None = None


class RefundResult(Record, frozen=True, kw_only=True):
    outcome: CallOutcome
    channel_reference: str | None = None
    decline_code: str | None = None
    failure: Failure | None = None


class IntentState(StrEnum):
    """What the provider's own record says about a charge."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # declined, canceled, or never confirmed: no money moved
    PENDING = "pending"  # still in progress at the provider


class ProviderIntent(Record, frozen=True, kw_only=True):
    id: str
    state: IntentState
    amount: int
    currency: str
    payment_no: str | None = None
    decline_code: str | None = None


class ProviderRefund(Record, frozen=True, kw_only=True):
    id: str
    state: IntentState
    amount: int
    refund_no: str | None = None
    failure_reason: str | None = None


class ChannelError(PaymentError):
    """The provider refused the request itself (bad key, invalid parameters): not a decline."""

    code, status = "channel_error", 502
    default_message = "The payment channel rejected the request."


class LookupFailed(Exception):
    """A lookup got no answer from the provider (breaker open, timeout, 5xx)."""


class ChannelClient(Protocol):
    def charge(
        self,
        *,
        payment_no: str,
        merchant_order_no: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
    ) -> ChargeResult: ...

    def refund(
        self,
        *,
        refund_no: str,
        payment_no: str,
        charge_reference: str,
        amount: int,
        idempotency_key: str,
        reason: str | None = None,
    ) -> RefundResult: ...

    def find_intent(self, *, payment_no: str, reference: str | None) -> ProviderIntent | None:
        """The provider's intent for a payment: by its stored id, else by a search on
        metadata.payment_no (eventually consistent). None when nothing was found."""
        ...

    def find_refund(self, *, refund_no: str, charge_reference: str) -> ProviderRefund | None:
        """The provider's refund carrying metadata.refund_no on that charge, if any."""
        ...


def get_channel(name: str) -> ChannelClient:
    """The client for `name`, built once per execution environment (see `services`)."""
    if name not in SUPPORTED:
        raise UnsupportedChannel(details=[{"field": "channel", "value": name}])
    from payments import services

    return services.channel(name)


def reset_channels() -> None:
    """Forget cached clients and breakers (tests, or after settings change)."""
    from payments import services

    services.reset_channels()
