"""The refund route (refund function)."""

from __future__ import annotations

import hashlib

from payments.api import authenticated, parse_body
from payments.channel import get_channel
from payments.http import ApiRequest, JsonResponse, Router, respond
from payments.idempotency import once, validate_key
from payments.logic import new_id
from payments.logic import refunds as refund_logic
from payments.logic.recording import refund_attempt
from payments.models import PaymentStatus, RefundRequest, RefundStatus
from payments.observability import tracing
from payments.services import order_store, payment_store

router = Router()


def _refund_no(merchant_id: str, payment_no: str, key: str | None) -> str:
    """Stable for a retried request, so the provider's idempotency key is stable too; the
    key is scoped to the payment (the same key on another payment is another refund)."""
    if key is None:
        return new_id("re")
    seed = f"{merchant_id}:{payment_no}:{key}".encode()
    return "re_" + hashlib.sha256(seed).hexdigest()[:32]


@router.route("POST", "/api/v1/payments/{payment_no}/refunds")
def create_refund(request: ApiRequest) -> JsonResponse:
    with refund_attempt() as attempt:
        merchant = authenticated(request)
        key = validate_key(request.header("idempotency-key"))
        command = parse_body(request, RefundRequest)
        payment_no = request.path_params.get("payment_no", "")
        outcome, _replayed = once(
            lambda: refund_logic.refund(
                merchant.merchant_id,
                payment_no,
                command,
                payments=payment_store(),
                orders=order_store(),
                channel_for=get_channel,
                refund_no=_refund_no(merchant.merchant_id, payment_no, key),
                trace_parent=tracing.inject_context().get("traceparent"),
                on_payment=lambda payment: setattr(attempt, "currency", payment.currency),
            ),
            model=refund_logic.RefundOutcome,
            operation=f"refund:{payment_no}",
            merchant_id=merchant.merchant_id,
            key=key,
            body=request.body,
            lambda_context=request.lambda_context,
        )
        refund, payment = outcome.refund, outcome.payment
        attempt.currency, attempt.amount_minor = refund.currency, refund.amount
        if refund.status is RefundStatus.PENDING:
            attempt.status = "pending"
        else:
            fully = payment.status is PaymentStatus.REFUNDED
            attempt.status = "success" if fully else "partial_success"
        return respond(
            outcome.http_status(),
            {
                "refund_no": refund.refund_no,
                "payment_no": refund.payment_no,
                "amount": refund.amount,
                "currency": refund.currency,
                "status": refund.status.value,
                "payment_status": payment.status.value,
                "refunded_amount": payment.refunded_amount,
            },
        )
