"""Reconciliation (SPEC §4): settle payments left `processing` and refunds left `pending`
from what the provider's own records say, with the request path's conditional writes.

Rules that keep it honest:
* a charge is settled `succeeded` only on the provider's succeeded intent for this payment
  (amount and currency checked), `failed` only on the provider's own failed intent, or on
  lookups that found nothing — after no request of the payment can still be in flight
  (`no_charge_after`) and on two checks spaced wider than the provider's search freshness;
* a charge that surfaces for a payment already `failed` is never dropped: refunded at once
  (or flagged, `RECONCILE_LATE_CHARGE=flag`) and counted;
* still unknown after `max_attempts` (with exponential backoff): left as it is, counted,
  alerted (`payments_unresolved`, `reconciliation_total{outcome="exhausted"}`).

Webhooks call `reconcile_payment` / `reconcile_refund` directly as hints: the state is
re-read from the provider before any transition, grace period and backoff aside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from opentelemetry import trace

from payments.channel import (
    CallOutcome,
    ChannelClient,
    IntentState,
    LookupFailed,
    ProviderIntent,
)
from payments.config import Settings
from payments.errors import NotFound
from payments.logic import refunds as refund_logic
from payments.logic.settlement import settle_charged, settle_not_charged
from payments.observability import metrics
from payments.observability.logging import logger
from payments.records import Payment, PaymentStatus, Reconciliation, Refund, RefundStatus
from payments.store.orders import OrderStore
from payments.store.payments import (
    AlreadyFinal,
    AlreadySettled,
    Kind,
    PaymentStore,
    SettlementConflict,
    UnresolvedRef,
)

__all__ = ["Outcome", "Reconciler", "backlog"]

_tracer = trace.get_tracer(__name__)


class Outcome(StrEnum):
    """`reconciliation_total{outcome}`."""

    SUCCEEDED = "succeeded"  # settled: charged / refund made
    FAILED = "failed"  # settled: no charge / refund not made (reservation released)
    UNKNOWN = "unknown"  # the provider could not tell yet; looked at again later
    EXHAUSTED = "exhausted"  # retry budget spent: left for an operator
    ALREADY_FINAL = "already_final"  # settled meanwhile by someone else
    SKIPPED = "skipped"  # not due yet (backoff) or exhausted earlier
    LOOKUP_FAILED = "lookup_failed"  # the provider did not answer the lookup
    MISMATCH = "mismatch"  # the provider's record disagrees on amount/currency: flagged
    LATE_CHARGE_REFUNDED = "late_charge_refunded"
    LATE_CHARGE_FLAGGED = "late_charge_flagged"
    NOT_FOUND = "not_found"  # no such payment or refund in the ledger (not ours)
    ERROR = "error"  # a bug or a storage failure


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def backlog(
    payments: PaymentStore, settings: Settings, now: datetime | None = None
) -> dict[str, Any]:
    """Unresolved items beyond the grace period: count and oldest age, per kind."""
    now = now or datetime.now(UTC)
    before = _iso(now - timedelta(seconds=settings.reconcile_grace_seconds))
    out: dict[str, Any] = {}
    kinds: tuple[tuple[Kind, str], ...] = (("PAYMENT", "payments"), ("REFUND", "refunds"))
    for kind, name in kinds:
        count, oldest = payments.backlog(kind, before=before)
        age = (now - _parse(oldest)).total_seconds() if oldest else 0.0
        out[name] = {"unresolved": count, "oldest_age_seconds": round(age, 3)}
    return out


@dataclass
class Reconciler:
    payments: PaymentStore
    orders: OrderStore
    channel_for: Callable[[str], ChannelClient]
    settings: Settings
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    # ---- the scheduled run -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """One scheduled pass over both backlogs; returns counts by outcome (for logs).

        Up to `batch_size` items are looked at per kind; items not due yet (backoff) or left
        for an operator are paged past, so they never keep newer ones from their turn."""
        now = self.clock()
        before = _iso(now - timedelta(seconds=self.settings.reconcile_grace_seconds))
        counts: dict[str, int] = {}
        for kind in ("PAYMENT", "REFUND"):
            for ref in self._due_items(kind, before):
                if ref.refund_no is None:
                    outcome = self.reconcile_payment(ref.payment_no, scheduled=True)
                else:
                    outcome = self.reconcile_refund(ref.payment_no, ref.refund_no, scheduled=True)
                label = f"{kind.lower()}.{outcome}"
                counts[label] = counts.get(label, 0) + 1
        self._report_backlog()
        return counts

    def _due_items(self, kind: Kind, before: str) -> Iterator[UnresolvedRef]:
        batch = self.settings.reconcile_batch_size
        refs = self.payments.iter_unresolved(
            kind, before=before, now=_iso(self.clock()), page_size=batch
        )
        for taken, ref in enumerate(refs):
            if taken >= batch:
                return
            yield ref

    def _report_backlog(self) -> None:
        now = self.clock()
        for kind, label in (("payments", "payment"), ("refunds", "refund")):
            stats = backlog(self.payments, self.settings, now)[kind]
            metrics.PAYMENTS_UNRESOLVED.set(stats["unresolved"], kind=label)
            metrics.PAYMENTS_UNRESOLVED_OLDEST.set(stats["oldest_age_seconds"], kind=label)

    # ---- payments ---------------------------------------------------------------------------

    def reconcile_payment(
        self, payment_no: str, *, scheduled: bool = False, reference: str | None = None
    ) -> Outcome:
        """Settle one payment from the provider's record. `reference`: an intent id a
        webhook named (used when the payment has none stored)."""
        with self._attempt("payment", payment_no) as done:
            payment = self.payments.get(payment_no)
            with _linked_span("reconcile payment", payment.trace_parent, payment_no):
                done.outcome = self._payment(payment, scheduled=scheduled, reference=reference)
        return done.outcome

    def _payment(self, payment: Payment, *, scheduled: bool, reference: str | None) -> Outcome:
        if payment.status is not PaymentStatus.PROCESSING:
            if payment.status is PaymentStatus.FAILED and not scheduled:
                return self._late_charge_check(payment, reference)
            return Outcome.ALREADY_FINAL
        state = payment.reconciliation or Reconciliation()
        if scheduled and not self._due(state):
            return Outcome.SKIPPED
        channel = self.channel_for(payment.channel)
        try:
            intent = channel.find_intent(
                payment_no=payment.payment_no, reference=payment.channel_reference or reference
            )
        except LookupFailed:
            return self._retry_later(payment_ref(payment), state, Outcome.LOOKUP_FAILED)
        try:
            return self._settle_payment(payment, intent, state)
        except AlreadySettled:
            return Outcome.ALREADY_FINAL

    def _settle_payment(
        self, payment: Payment, intent: ProviderIntent | None, state: Reconciliation
    ) -> Outcome:
        if intent is not None and not _matches(payment, intent):
            logger.error("provider intent disagrees with the payment", extra={"intent": intent.id})
            return self._retry_later(payment_ref(payment), state, Outcome.MISMATCH)
        if intent is not None and intent.state is IntentState.SUCCEEDED:
            try:
                settle_charged(
                    payment, payments=self.payments, orders=self.orders, channel_reference=intent.id
                )
            except SettlementConflict:
                # Its order was cancelled (the workflow saw a failure) yet the provider charged:
                # the order cannot be paid any more, so the charge is a late one, refunded.
                settle_not_charged(
                    payment,
                    payments=self.payments,
                    orders=self.orders,
                    failure_code="order_cancelled",
                )
                return self._late_charge_check(self.payments.get(payment.payment_no), intent.id)
            return Outcome.SUCCEEDED
        if intent is not None and intent.state is IntentState.FAILED:
            code = intent.decline_code or "card_declined"
            fields = {"channel_reference": intent.id}
            settle_not_charged(
                payment,
                payments=self.payments,
                orders=self.orders,
                failure_code=code,
                fields=fields,
            )
            return Outcome.FAILED
        if intent is None and self._no_charge_proven(payment.created_at, state):
            settle_not_charged(
                payment, payments=self.payments, orders=self.orders, failure_code="no_charge_found"
            )
            return Outcome.FAILED
        missed = intent is None
        return self._retry_later(payment_ref(payment), state, Outcome.UNKNOWN, missed=missed)

    def _late_charge_check(self, payment: Payment, reference: str | None) -> Outcome:
        """A payment settled `failed` that the provider now shows charged."""
        channel = self.channel_for(payment.channel)
        try:
            intent = channel.find_intent(payment_no=payment.payment_no, reference=reference)
        except LookupFailed:
            return Outcome.LOOKUP_FAILED
        if intent is None or intent.state is not IntentState.SUCCEEDED:
            return Outcome.ALREADY_FINAL
        logger.error("late charge for a failed payment", extra={"intent": intent.id})
        if self.settings.reconcile_late_charge == "flag":
            self._note_late(payment, intent, "flagged")
            return Outcome.LATE_CHARGE_FLAGGED
        result = channel.refund(
            refund_no=f"late_{payment.payment_no}",
            payment_no=payment.payment_no,
            charge_reference=intent.id,
            amount=intent.amount,
            idempotency_key=f"late-refund-{intent.id}",
            reason="duplicate",
        )
        refunded = result.outcome is CallOutcome.SUCCEEDED
        self._note_late(payment, intent, "refunded" if refunded else "flagged")
        return Outcome.LATE_CHARGE_REFUNDED if refunded else Outcome.LATE_CHARGE_FLAGGED

    def _note_late(self, payment: Payment, intent: ProviderIntent, action: str) -> None:
        self.payments.annotate(
            payment.payment_no, {"late_charge": {"reference": intent.id, "action": action}}
        )

    # ---- refunds ----------------------------------------------------------------------------

    def reconcile_refund(
        self, payment_no: str, refund_no: str, *, scheduled: bool = False
    ) -> Outcome:
        with self._attempt("refund", payment_no) as done:
            refund = self.payments.get_refund(payment_no, refund_no)
            if refund is None:
                raise NotFound("No such refund.")
            if refund.status is not RefundStatus.PENDING:
                done.outcome = Outcome.ALREADY_FINAL
                return done.outcome
            with _linked_span("reconcile refund", refund.trace_parent, payment_no):
                done.outcome = self._refund(refund, scheduled=scheduled)
        return done.outcome

    def _refund(self, refund: Refund, *, scheduled: bool) -> Outcome:
        state = refund.reconciliation or Reconciliation()
        if scheduled and not self._due(state):
            return Outcome.SKIPPED
        payment = self.payments.get(refund.payment_no)
        ref = UnresolvedRef("REFUND", refund.payment_no, refund.refund_no, refund.created_at)
        try:
            found = self.channel_for(payment.channel).find_refund(
                refund_no=refund.refund_no, charge_reference=payment.channel_reference or ""
            )
        except LookupFailed:
            return self._retry_later(ref, state, Outcome.LOOKUP_FAILED)
        try:
            if found is not None and found.state is IntentState.SUCCEEDED:
                refund_logic.complete(refund, found.id, payments=self.payments, orders=self.orders)
                return Outcome.SUCCEEDED
            if found is not None and found.state is IntentState.FAILED:
                code = found.failure_reason or "refund_failed"
                self.payments.fail_refund(refund, failure_code=code, now=_iso(self.clock()))
                return Outcome.FAILED
            if found is None and self._no_charge_proven(refund.created_at, state):
                self.payments.fail_refund(
                    refund, failure_code="no_refund_found", now=_iso(self.clock())
                )
                return Outcome.FAILED
        except AlreadyFinal:
            return Outcome.ALREADY_FINAL
        return self._retry_later(ref, state, Outcome.UNKNOWN, missed=found is None)

    # ---- bookkeeping ------------------------------------------------------------------------

    def _due(self, state: Reconciliation) -> bool:
        if state.exhausted:
            return False
        return state.next_at is None or _parse(state.next_at) <= self.clock()

    def _no_charge_proven(self, created_at: str, state: Reconciliation) -> bool:
        now = self.clock()
        settled_in_flight = (now - _parse(created_at)).total_seconds() >= (
            self.settings.reconcile_no_charge_after_seconds
        )
        if not settled_in_flight or state.first_miss_at is None:
            return False
        spacing = (now - _parse(state.first_miss_at)).total_seconds()
        return spacing >= self.settings.reconcile_search_freshness_seconds

    def _retry_later(
        self, ref: UnresolvedRef, state: Reconciliation, outcome: Outcome, *, missed: bool = False
    ) -> Outcome:
        """Remember this attempt and when to look again; exhausted after the budget."""
        now = self.clock()
        s = self.settings
        attempts = state.attempts + 1
        delay = min(
            s.reconcile_backoff_seconds * 2 ** (attempts - 1), s.reconcile_backoff_max_seconds
        )
        first_miss = state.first_miss_at
        # A miss only counts once no request of the item can still be in flight.
        in_flight_over = (
            now - _parse(ref.since)
        ).total_seconds() >= s.reconcile_no_charge_after_seconds
        if missed and first_miss is None and in_flight_over:
            first_miss = _iso(now)
            delay = min(delay, s.reconcile_search_freshness_seconds)
        exhausted = attempts >= s.reconcile_max_attempts
        updated = Reconciliation(
            attempts=attempts,
            first_miss_at=first_miss,
            next_at=_iso(now + timedelta(seconds=delay)),
            exhausted=exhausted,
        )
        self.payments.record_reconciliation(ref, updated, now=_iso(now))
        if exhausted:
            logger.error("reconciliation budget exhausted", extra={"payment_no": ref.payment_no})
            return Outcome.EXHAUSTED
        return outcome

    @contextmanager
    def _attempt(self, kind: str, payment_no: str) -> Iterator[_Done]:
        """Count every attempt exactly once, errors included (the defer pattern)."""
        done = _Done()
        logger.append_keys(payment_no=payment_no)
        try:
            yield done
        except NotFound:
            done.outcome = Outcome.NOT_FOUND
        except Exception:
            done.outcome = Outcome.ERROR
            logger.exception("reconciliation failed")
        finally:
            metrics.RECONCILIATION_TOTAL.inc(kind=kind, outcome=done.outcome.value)
            logger.remove_keys(["payment_no"])


@dataclass
class _Done:
    outcome: Outcome = Outcome.ERROR


def payment_ref(payment: Payment) -> UnresolvedRef:
    return UnresolvedRef("PAYMENT", payment.payment_no, None, payment.created_at)


def _matches(payment: Payment, intent: ProviderIntent) -> bool:
    return intent.amount == payment.amount and intent.currency.upper() == payment.currency


@contextmanager
def _linked_span(name: str, trace_parent: str | None, payment_no: str) -> Iterator[trace.Span]:
    """A span of this run, linked to the payment's original request trace."""
    links = []
    if trace_parent:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        context = TraceContextTextMapPropagator().extract({"traceparent": trace_parent})
        linked = trace.get_current_span(context).get_span_context()
        if linked.is_valid:
            links.append(trace.Link(linked, {"link.reason": "original request"}))
    with _tracer.start_as_current_span(
        name, links=links, attributes={"payment_no": payment_no}
    ) as span:
        yield span
