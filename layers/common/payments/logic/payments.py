"""Create a payment: store it, run the workflow, record the outcome."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from payments.auth import Merchant
from payments.errors import OUTCOME_ERRORS, PaymentError
from payments.logic import new_id, utc_now
from payments.models import CreatePaymentRequest, Payment, PaymentStatus, RiskAssessment
from payments.observability.logging import logger
from payments.store.payments import PaymentStore
from payments.store.workflow import PaymentWorkflow, WorkflowFailed

# Workflow outcome -> (payment status, error code of the response or None).
_OUTCOMES: dict[str, tuple[PaymentStatus, str | None]] = {
    "succeeded": (PaymentStatus.SUCCEEDED, None),
    "pending_review": (PaymentStatus.PENDING_REVIEW, None),
    "risk_rejected": (PaymentStatus.RISK_REJECTED, "risk_rejected"),
    "declined": (PaymentStatus.FAILED, "channel_declined"),
    "channel_unavailable": (PaymentStatus.FAILED, "channel_unavailable"),
    "order_failed": (PaymentStatus.FAILED, "order_creation_failed"),
}


class PaymentOutcome(BaseModel):
    """What a create-payment call produced; stored as the idempotent response."""

    payment: Payment
    error_code: str | None = None

    def error(self) -> PaymentError | None:
        if self.error_code is None:
            return None
        return OUTCOME_ERRORS.get(self.error_code, PaymentError)()


def _task_payment(payment: Payment) -> dict[str, Any]:
    """What the workflow's tasks need; never the description or metadata."""
    return payment.model_dump(
        mode="json",
        include={
            "payment_no",
            "merchant_id",
            "merchant_order_no",
            "amount",
            "currency",
            "channel",
            "payment_method",
            "customer",
            "created_at",
        },
    )


def create(
    merchant: Merchant,
    request: CreatePaymentRequest,
    *,
    payments: PaymentStore,
    workflow: PaymentWorkflow,
    trace_context: dict[str, str],
) -> PaymentOutcome:
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
        customer=request.customer,
        description=request.description,
        metadata=request.metadata,
        created_at=now,
        updated_at=now,
    )
    payments.create(payment)
    logger.append_keys(payment_no=payment.payment_no)
    try:
        output = workflow.run(
            {"payment": _task_payment(payment), "trace_context": trace_context},
            name=payment.payment_no,
        )
    except WorkflowFailed as failure:
        # The charge may or may not have happened: keep `processing` for reconciliation.
        logger.error("payment workflow failed", extra={"workflow_status": failure.status})
        raise PaymentError("The payment could not be completed.") from None

    outcome_name = output.get("outcome", "")
    status, error_code = _OUTCOMES.get(outcome_name, (PaymentStatus.FAILED, "internal_error"))
    fields: dict[str, Any] = {"amount": payment.amount}
    risk = (output.get("risk") or {}).get("result")
    if risk:
        fields["risk"] = RiskAssessment.model_validate(risk).model_dump(mode="json")
    order = (output.get("order") or {}).get("result")
    if order:
        fields["order_no"] = order["order_no"]
    charge = (output.get("charge") or {}).get("result") or {}
    if charge.get("channel_reference"):
        fields["channel_reference"] = charge["channel_reference"]
    if error_code:
        fields["failure_code"] = charge.get("decline_code") or error_code
    final = payments.finalize(payment.payment_no, status, now=utc_now(), fields=fields)
    return PaymentOutcome(payment=final, error_code=error_code)
