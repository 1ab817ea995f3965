"""Create a payment: store it, run the workflow, settle what it proved.

Only what the workflow proved is settled: a provider answer or a request that provably
never reached the provider. Anything else leaves the payment `processing` with its order,
answered 202, for reconciliation (SPEC §4).
"""

from __future__ import annotations

import contextlib
from typing import Any

from payments.auth import Merchant
from payments.channel import CallOutcome, ChannelError, ChargeResult
from payments.channel.breaker import CircuitBreaker
from payments.errors import (
    ChannelDeclined,
    ChannelUnavailable,
    DuplicateOrder,
    OrderCreationFailed,
    PaymentError,
    RiskRejected,
    ServiceUnavailable,
)
from payments.logic import new_id, utc_now
from payments.logic.settlement import settle_charged, settle_not_charged, settle_without_order
from payments.models import CreatePaymentRequest, Payment, PaymentStatus
from payments.observability.logging import logger
from payments.records import CustomerInfo, Record, dump, load
from payments.store.orders import OrderStore
from payments.store.payments import AlreadySettled, PaymentStore
from payments.store.workflow import PaymentWorkflow, WorkflowFailed, WorkflowNotStarted
from payments.tasks import TaskPayment, WorkflowInput, WorkflowOutcome, WorkflowOutput

_ERRORS: dict[str, type[PaymentError]] = {
    RiskRejected.code: RiskRejected,
    ChannelDeclined.code: ChannelDeclined,
}


class PaymentOutcome(Record, frozen=True, kw_only=True):
    """What a create-payment call produced; stored as the idempotent response."""

    payment: Payment
    error_code: str | None = None
    decline_code: str | None = None

    def http_status(self) -> int:
        error = self.error()
        if error is not None:
            return error.status
        return 201 if self.payment.status is PaymentStatus.SUCCEEDED else 202

    def error(self) -> PaymentError | None:
        if self.error_code is None:
            return None
        return _ERRORS.get(self.error_code, PaymentError)()


def outcome_of(payment: Payment) -> PaymentOutcome:
    """The response a payment's current status deserves."""
    if payment.status is PaymentStatus.RISK_REJECTED:
        return PaymentOutcome(payment=payment, error_code=RiskRejected.code)
    if payment.status is PaymentStatus.FAILED:
        return PaymentOutcome(
            payment=payment, error_code=ChannelDeclined.code, decline_code=payment.failure_code
        )
    return PaymentOutcome(payment=payment)


def create(
    merchant: Merchant,
    request: CreatePaymentRequest,
    *,
    payments: PaymentStore,
    orders: OrderStore,
    workflow: PaymentWorkflow,
    breaker: CircuitBreaker,
    trace_context: dict[str, str],
    fingerprint: str | None = None,
) -> PaymentOutcome:
    wait = breaker.remaining_seconds()
    if wait:
        # Fail fast while the provider's breaker is open: nothing is stored, so the same
        # request (same key) can simply be sent again after Retry-After.
        raise ChannelUnavailable(retry_after=wait)
    now = utc_now()
    payment = Payment(
        payment_no=new_id("pay"),
        merchant_id=merchant.merchant_id,
        merchant_order_no=request.merchant_order_no,
        status=PaymentStatus.PROCESSING,
        amount=request.amount,
        currency=request.currency,
        channel=request.channel,
        payment_method=request.payment_method,
        customer=load(CustomerInfo, request.customer.model_dump()) if request.customer else None,
        description=request.description,
        metadata=request.metadata,
        created_at=now,
        updated_at=now,
        trace_parent=trace_context.get("traceparent"),
        request_fingerprint=fingerprint,
    )
    try:
        payments.create(payment)
    except DuplicateOrder:
        earlier = _same_request(payments, payment, fingerprint)
        if earlier is None:
            raise
        # This very request ran before and its answer was lost (the gateway died): its
        # payment, as it stands now, is the answer.
        return outcome_of(earlier)
    logger.append_keys(payment_no=payment.payment_no)
    task_payment = load(TaskPayment, dump(payment))
    try:
        output = workflow.run(
            WorkflowInput(payment=task_payment, trace_context=trace_context),
            name=payment.payment_no,
        )
    except WorkflowNotStarted as refused:
        logger.warning("payment workflow not started", extra={"reason": str(refused)})
        raise _settle_failure(payment, payments, orders, "workflow_not_started") from None
    except WorkflowFailed as failure:
        # Any task may have run, the charge included: keep `processing` for reconciliation.
        logger.error("payment workflow failed", extra={"workflow_status": failure.status})
        return outcome_of(payments.get(payment.payment_no))
    return _settle(payment, output, payments, orders)


def _same_request(
    payments: PaymentStore, payment: Payment, fingerprint: str | None
) -> Payment | None:
    if fingerprint is None:
        return None
    holder = payments.holder_of(payment.merchant_id, payment.merchant_order_no)
    if holder is None:
        return None
    earlier = payments.get(holder)
    return earlier if earlier.request_fingerprint == fingerprint else None


def _learnt(output: WorkflowOutput) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if output.risk is not None:
        fields["risk"] = dump(output.risk.result)
    if output.order_no:
        fields["order_no"] = output.order_no
    charge = output.charge_result
    if charge is not None and charge.channel_reference:
        fields["channel_reference"] = charge.channel_reference
    return fields


# What each way the workflow can end settles the payment to (None: stays processing).
# tests/unit/test_workflow_contract.py checks it covers every outcome the ASL can produce.
SETTLES_TO: dict[WorkflowOutcome, PaymentStatus | None] = {
    WorkflowOutcome.SUCCEEDED: PaymentStatus.SUCCEEDED,
    WorkflowOutcome.CHARGED: PaymentStatus.SUCCEEDED,
    WorkflowOutcome.PENDING_REVIEW: PaymentStatus.PENDING_REVIEW,
    WorkflowOutcome.RISK_REJECTED: PaymentStatus.RISK_REJECTED,
    WorkflowOutcome.DECLINED: PaymentStatus.FAILED,
    WorkflowOutcome.CHANNEL_UNAVAILABLE: PaymentStatus.FAILED,
    WorkflowOutcome.CHANNEL_REJECTED: PaymentStatus.FAILED,
    WorkflowOutcome.RISK_CHECK_FAILED: PaymentStatus.FAILED,
    WorkflowOutcome.ORDER_FAILED: PaymentStatus.FAILED,
    WorkflowOutcome.CHARGE_UNKNOWN: None,
}

# Failures answered with a retryable error (not stored), by the failure code they record.
_FAILURE_CODES = {
    WorkflowOutcome.CHANNEL_UNAVAILABLE: "channel_unavailable",
    WorkflowOutcome.CHANNEL_REJECTED: "channel_error",
    WorkflowOutcome.RISK_CHECK_FAILED: "risk_check_failed",
    WorkflowOutcome.ORDER_FAILED: "order_creation_failed",
}


def _settle(
    payment: Payment, output: WorkflowOutput, payments: PaymentStore, orders: OrderStore
) -> PaymentOutcome:
    outcome, fields = output.outcome, _learnt(output)
    target = SETTLES_TO[outcome]
    charge = output.charge_result or ChargeResult(outcome=CallOutcome.UNKNOWN)
    try:
        if target is PaymentStatus.SUCCEEDED:
            reference = str(fields.pop("channel_reference", "") or charge.channel_reference)
            settled = settle_charged(
                payment,
                payments=payments,
                orders=orders,
                channel_reference=reference,
                fields=fields,
            )
            return outcome_of(settled)
        if target in (PaymentStatus.PENDING_REVIEW, PaymentStatus.RISK_REJECTED):
            assert target is not None
            settled = settle_without_order(payment, target, payments=payments, fields=fields)
            return outcome_of(settled)
        if target is None:
            logger.warning("charge outcome unknown; left for reconciliation")
            return outcome_of(payments.note(payment.payment_no, fields, now=utc_now()))
        if outcome is WorkflowOutcome.DECLINED:
            code = charge.decline_code or "card_declined"
            settled = settle_not_charged(
                payment, payments=payments, orders=orders, failure_code=code, fields=fields
            )
            return outcome_of(settled)
    except AlreadySettled as done:  # a webhook or the reconciler got there first
        return outcome_of(done.payment)
    code = _FAILURE_CODES[outcome]
    raise _settle_failure(payment, payments, orders, code, fields=fields, charge=charge)


def _settle_failure(
    payment: Payment,
    payments: PaymentStore,
    orders: OrderStore,
    code: str,
    *,
    fields: dict[str, Any] | None = None,
    charge: ChargeResult | None = None,
) -> PaymentError:
    """Settle a payment that provably moved no money, and the error that tells the merchant
    to retry. Raised inside the idempotent call, so it is not stored and the same request
    can run again."""
    with contextlib.suppress(AlreadySettled):
        settle_not_charged(
            payment, payments=payments, orders=orders, failure_code=code, fields=fields
        )
    if code == "channel_unavailable":
        retry_after = (charge.failure.retry_after if charge and charge.failure else None) or 1
        return ChannelUnavailable(retry_after=retry_after)
    if code == "channel_error":
        return ChannelError()
    if code == "order_creation_failed":
        return OrderCreationFailed()
    return ServiceUnavailable(headers={"Retry-After": "1"})
