"""Typed errors. Each carries its public code and HTTP status; `http.py` maps them once."""

from __future__ import annotations

from typing import Any


class PaymentError(Exception):
    """Base of every error a merchant may see. `message` is safe to show."""

    code = "internal_error"
    status = 500
    default_message = "Internal error."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details or []
        self.headers = headers or {}
        super().__init__(self.message)


class InvalidRequest(PaymentError):
    code, status, default_message = "invalid_request", 400, "The request is invalid."


class InvalidAmount(PaymentError):
    code, status, default_message = "invalid_amount", 400, "The amount is invalid."


class UnsupportedCurrency(PaymentError):
    code, status, default_message = "unsupported_currency", 400, "The currency is not supported."


class UnsupportedChannel(PaymentError):
    code, status, default_message = "unsupported_channel", 400, "The channel is not supported."


class Unauthorized(PaymentError):
    code, status, default_message = "unauthorized", 401, "Authentication failed."


class NotFound(PaymentError):
    code, status, default_message = "not_found", 404, "Not found."


class MethodNotAllowed(PaymentError):
    code, status, default_message = "method_not_allowed", 405, "Method not allowed."


class DuplicateOrder(PaymentError):
    code, status = "duplicate_order", 409
    default_message = "merchant_order_no has already been used."


class InvalidStatus(PaymentError):
    code, status = "invalid_status", 409
    default_message = "The payment is not in a refundable status."


class RequestInProgress(PaymentError):
    code, status = "request_in_progress", 409
    default_message = "A request with this Idempotency-Key is still in progress."


class PayloadTooLarge(PaymentError):
    code, status, default_message = "payload_too_large", 413, "The body exceeds 32 KiB."


class UnsupportedMediaType(PaymentError):
    code, status = "unsupported_media_type", 415
    default_message = "The body must be sent as Content-Type: application/json."


class IdempotencyKeyReused(PaymentError):
    code, status = "idempotency_key_reused", 422
    default_message = "This Idempotency-Key was used with a different request body."


class AmountExceeded(PaymentError):
    code, status = "amount_exceeded", 422
    default_message = "The amount exceeds the amount still refundable."


class RefundFailed(PaymentError):
    code, status, default_message = "refund_failed", 402, "The provider declined the refund."


class ChannelUnavailable(PaymentError):
    code, status = "channel_unavailable", 503
    default_message = "The payment channel is unavailable; retry later."

    def __init__(self, message: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ServiceUnavailable(PaymentError):
    code, status, default_message = "service_unavailable", 503, "Service unavailable."


class RiskRejected(PaymentError):
    code, status, default_message = "risk_rejected", 402, "The payment was rejected by risk checks."


class ChannelDeclined(PaymentError):
    code, status, default_message = "channel_declined", 402, "The provider declined the payment."


class OrderCreationFailed(PaymentError):
    code, status = "order_creation_failed", 500
    default_message = "The order could not be created; no charge was made."


class InvalidSignature(PaymentError):
    """A provider webhook whose signature, timestamp or body could not be verified."""

    code, status = "invalid_signature", 400
    default_message = "The webhook signature could not be verified."
