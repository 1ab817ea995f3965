"""The payment gateway's routes (create_payment function)."""

from __future__ import annotations

import hashlib

from pydantic import ValidationError

from payments.api import authenticated, parse_body
from payments.errors import InvalidRequest
from payments.http import ApiRequest, JsonResponse, Router, error_body, respond
from payments.idempotency import once, validate_key
from payments.logic import payments as payment_logic
from payments.logic.recording import payment_attempt
from payments.models import (
    CreatePaymentRequest,
    ListPaymentsQuery,
    PaymentStatus,
    invalid_request_from,
)
from payments.observability import current_trace_id, tracing
from payments.services import breaker, order_store, payment_store, workflow

router = Router(
    served_elsewhere=frozenset(
        {("POST", "/api/v1/payments/{payment_no}/refunds"), ("POST", "/webhooks/stripe")}
    )
)

_METRIC_STATUS = {
    PaymentStatus.SUCCEEDED: "success",
    PaymentStatus.PENDING_REVIEW: "pending_review",
    PaymentStatus.RISK_REJECTED: "risk_rejected",
    PaymentStatus.PROCESSING: "processing",
}


def _fingerprint(merchant_id: str, key: str | None, body: bytes) -> str | None:
    """Identifies one merchant request across re-runs (same key, same bytes)."""
    if key is None:
        return None
    digest = hashlib.sha256(body).hexdigest()
    return hashlib.sha256(f"{merchant_id}\n{key}\n{digest}".encode()).hexdigest()


@router.route("POST", "/api/v1/payments")
def create_payment(request: ApiRequest) -> JsonResponse:
    with payment_attempt() as attempt:
        merchant = authenticated(request)
        key = validate_key(request.header("idempotency-key"))
        command = parse_body(request, CreatePaymentRequest)
        attempt.currency, attempt.channel = command.currency, command.channel
        outcome, replayed = once(
            lambda: payment_logic.create(
                merchant,
                command,
                payments=payment_store(),
                orders=order_store(),
                workflow=workflow(),
                breaker=breaker(command.channel),
                trace_context=tracing.inject_context(),
                fingerprint=_fingerprint(merchant.merchant_id, key, request.body),
            ),
            model=payment_logic.PaymentOutcome,
            operation="create_payment",
            merchant_id=merchant.merchant_id,
            key=key,
            body=request.body,
            lambda_context=request.lambda_context,
        )
        payment = outcome.payment
        attempt.amount_minor = payment.amount
        attempt.status = "duplicate" if replayed else _METRIC_STATUS.get(payment.status, "failed")
        tracing.annotate_step(payment_no=payment.payment_no)
        body = payment.public(trace_id="")
        error = outcome.error()
        if error is None:
            return respond(outcome.http_status(), body)
        err = error_body(error)
        if outcome.decline_code:
            err["error"]["decline_code"] = outcome.decline_code
        return respond(error.status, {**body, **err}, error.headers)


@router.route("GET", "/api/v1/payments")
def list_payments(request: ApiRequest) -> JsonResponse:
    merchant = authenticated(request)
    try:
        query = ListPaymentsQuery.model_validate(request.query)
    except ValidationError as err:
        errors = [dict(e) for e in err.errors(include_input=False, include_url=False)]
        details = invalid_request_from(errors).details
        raise InvalidRequest("The query string is invalid.", details=details) from None
    # A cursor that names no payment of this merchant is 404 not_found, as Stripe does.
    page, has_more = payment_store().list_payments(
        merchant.merchant_id,
        merchant_order_no=query.merchant_order_no,
        status=query.status,
        limit=query.limit,
        starting_after=query.starting_after,
    )
    trace_id = current_trace_id()
    return respond(200, {"data": [p.public(trace_id=trace_id) for p in page], "has_more": has_more})


@router.route("GET", "/api/v1/payments/{payment_no}")
def get_payment(request: ApiRequest) -> JsonResponse:
    merchant = authenticated(request)
    store = payment_store()
    payment = store.get(request.path_params.get("payment_no", ""), merchant.merchant_id)
    refunds = [r.public() for r in store.refunds(payment.payment_no)]
    return respond(200, {**payment.public(trace_id=""), "refunds": refunds})


@router.route("GET", "/api/v1/orders/{order_no}")
def get_order(request: ApiRequest) -> JsonResponse:
    merchant = authenticated(request)
    order = order_store().get(request.path_params.get("order_no", ""), merchant.merchant_id)
    return respond(200, order.public())


@router.route("GET", "/health")
def health(_request: ApiRequest) -> JsonResponse:
    from payments.health import check

    healthy, checks = check()
    return respond(
        200 if healthy else 503, {"status": "ok" if healthy else "degraded", "checks": checks}
    )
