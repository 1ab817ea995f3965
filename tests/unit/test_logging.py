"""JSON logs: trace correlation, business keys and redaction of secrets and personal data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from payments.observability import logging as observability_logging
from payments.observability import tracing
from payments.observability.logging import logger
from payments.observability.redaction import (
    REDACTED,
    is_sensitive_key,
    redact,
    redact_attributes,
    redact_text,
)

STRIPE_KEY = "sk_test_51HxYzAbCdEfGhIjKlMnOpQrStUv"
LIVE_KEY = "sk_" + "live_51HxYzAbCdEfGhIjKlMnOpQrStUv"  # built at runtime: no secret-scanner noise
RESTRICTED_KEY = "rk_live_51HxYzAbCdEfGhIj"
PM_TOKEN = "pm_card_visa"
SIGNATURE = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig"
EMAIL = "jane.doe@example.com"
CARD = "4242424242424242"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    for name in ("OTEL_TRACES_SAMPLER", "JAEGER_SAMPLING_RATE", "TRACES_EXPORTER_FILE"):
        monkeypatch.delenv(name, raising=False)
    tracing.reset_for_tests()
    exporter = InMemorySpanExporter()
    tracing.setup("test-service", exporters=[exporter])
    yield exporter
    observability_logging.clear_invocation_keys()
    tracing.reset_for_tests()


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


# --------------------------------------------------------------------------- correlation


def test_log_lines_carry_trace_and_span_ids(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    with tracing.get_tracer().start_as_current_span("work") as span:
        logger.info("inside")
    logger.info("outside")
    inside, outside = lines(capsys)
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["message"] == "inside" and inside["level"] == "INFO"
    assert "trace_id" not in outside and "span_id" not in outside


def test_business_keys_appear_until_cleared(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    logger.append_keys(payment_no="PAY20240101", merchant_id="M-42", custom="x")
    logger.info("with keys")
    observability_logging.clear_invocation_keys()
    logger.info("without keys")
    with_keys, without_keys = lines(capsys)
    assert with_keys["payment_no"] == "PAY20240101"
    assert with_keys["merchant_id"] == "M-42"
    for key in ("payment_no", "merchant_id", "custom"):
        assert key not in without_keys
    assert without_keys["service"] == with_keys["service"]


def test_configure_names_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    previous = logger.service
    try:
        observability_logging.configure("refund-service")
        logger.info("hello")
        observability_logging.clear_invocation_keys()
        logger.info("still named")
        first, second = lines(capsys)
        assert first["service"] == second["service"] == "refund-service"
    finally:
        observability_logging.configure(previous)


# --------------------------------------------------------------------------- redaction in logs


def test_secrets_never_reach_the_log_output(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    logger.info(
        f"charging with {STRIPE_KEY} and {PM_TOKEN} for {EMAIL}, sig={SIGNATURE}",
        extra={
            "headers": {
                "Authorization": BEARER,
                "Stripe-Signature": f"t=1700000000,v1={SIGNATURE}",
                "X-Signature": SIGNATURE,
                "Content-Type": "application/json",
            },
            "payment_method": PM_TOKEN,
            "api_key": LIVE_KEY,
            "customer_email": EMAIL,
            "card": {"number": CARD, "exp_month": 12},
            "note": f"restricted {RESTRICTED_KEY} card {CARD}",
            "amount": 1999,
        },
    )
    output = capsys.readouterr().out
    for secret in (STRIPE_KEY, LIVE_KEY, RESTRICTED_KEY, PM_TOKEN, SIGNATURE, BEARER, CARD, EMAIL):
        assert secret not in output
    assert "eyJhbGci" not in output
    (line,) = (json.loads(text) for text in output.splitlines())
    assert "j***@example.com" in line["message"]
    assert line["customer_email"] == "j***@example.com"
    assert line["headers"]["Authorization"] == REDACTED
    assert line["headers"]["X-Signature"] == REDACTED
    assert line["headers"]["Content-Type"] == "application/json"
    assert line["payment_method"] == REDACTED
    assert line["card"] == REDACTED
    assert line["amount"] == 1999


def test_exception_text_is_redacted(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        raise RuntimeError(f"stripe rejected {STRIPE_KEY} for {EMAIL}")
    except RuntimeError:
        logger.exception("charge failed")
    output = capsys.readouterr().out
    assert STRIPE_KEY not in output and EMAIL not in output
    (line,) = (json.loads(text) for text in output.splitlines())
    assert line["exception_name"] == "RuntimeError"
    assert "j***@example.com" in line["exception"]


def test_appended_keys_are_redacted_too(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    logger.append_keys(merchant_id="M1", webhook_secret="whsec_abcdef123456")
    logger.info("keys")
    output = capsys.readouterr().out
    assert "whsec_abcdef123456" not in output
    assert json.loads(output)["webhook_secret"] == REDACTED


# --------------------------------------------------------------------------- redaction rules


@pytest.mark.parametrize(
    "key",
    [
        "secret",
        "client_secret",
        "api_key",
        "API-Key",
        "authorization",
        "Authorization",
        "signature",
        "x-signature",
        "Stripe-Signature",
        "password",
        "token",
        "access_token",
        "payment_method",
        "card",
        "card_number",
        "cvc",
        "cookie",
    ],
)
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)
    assert redact({key: "value"}) == {key: REDACTED}
    assert redact({key: {"nested": 1}}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    ["payment_no", "merchant_id", "amount", "currency", "trace_id", "span_id", "status", "step"],
)
def test_ordinary_keys(key: str) -> None:
    assert not is_sensitive_key(key)


@pytest.mark.parametrize(
    "text",
    [
        STRIPE_KEY,
        LIVE_KEY,
        RESTRICTED_KEY,
        "rk_test_abcdefgh1234",
        "whsec_abc123def456",
        PM_TOKEN,
        "pm_1NxYz2AbCdEfGh",
        "tok_visa",
        "card_1NxYz2AbCdEfGhIj",
        "pi_3Nx_secret_AbCdEf123",
        SIGNATURE,
        SIGNATURE.upper(),
        CARD,
        "4000056655665556",
        "378282246310005",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        BEARER,
    ],
)
def test_secret_values_are_redacted_inside_text(text: str) -> None:
    redacted = redact_text(f"before {text} after")
    assert text not in redacted
    assert redacted.startswith("before ") and redacted.endswith(" after")
    assert REDACTED in redacted


@pytest.mark.parametrize(
    "text",
    [
        "pi_3NxYz2AbCdEfGh",  # a PaymentIntent id is not a secret
        "card_declined",  # a decline code
        "PAY20240101123456789",
        "4bf92f3577b34da6a3ce929d0e0e4736",  # trace id
        "00f067aa0ba902b7",  # span id
        "amount 1999 JPY",
        "1234 5678 9012 3456",  # grouped digits failing Luhn
        "short",
    ],
)
def test_ordinary_values_are_kept(text: str) -> None:
    assert redact_text(text) == text


def test_inline_key_value_secrets() -> None:
    assert redact_text("password=hunter2 user=bob") == f"password={REDACTED} user=bob"
    assert redact_text('{"api_key": "abc"}') == '{"api_key": "' + REDACTED + '"}'


def test_emails_are_masked() -> None:
    assert redact_text(f"mail {EMAIL}") == "mail j***@example.com"
    assert redact({"email": "a@b.co"}) == {"email": "a***@b.co"}


def test_redact_walks_containers_and_keeps_other_types() -> None:
    value = {
        "list": [STRIPE_KEY, 1, None, {"token": "t"}],
        "tuple": (EMAIL,),
        "flag": True,
        "ratio": 0.5,
        "card_as_int": int(CARD),
        "big_int": 1234567890123,  # 13 digits, not a Luhn-valid card number
        "empty_secret": "",
    }
    assert redact(value) == {
        "list": [REDACTED, 1, None, {"token": REDACTED}],
        "tuple": ("j***@example.com",),
        "flag": True,
        "ratio": 0.5,
        "card_as_int": REDACTED,
        "big_int": 1234567890123,
        "empty_secret": "",
    }


def test_redact_attributes_for_spans() -> None:
    attributes = {
        "http.request.header.authorization": (BEARER,),
        "merchant_id": "M1",
        "customer": EMAIL,
        "stripe.request": f"key {STRIPE_KEY}",
        "amount": 1999,
    }
    assert redact_attributes(attributes) == {
        "http.request.header.authorization": REDACTED,
        "merchant_id": "M1",
        "customer": "j***@example.com",
        "stripe.request": f"key {REDACTED}",
        "amount": 1999,
    }
