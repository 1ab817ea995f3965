"""Property tests for money conversion and request signing; risk rules; settings."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments import money
from payments.auth import ApiKey, authenticate, sign
from payments.config import Settings
from payments.errors import InvalidAmount, Unauthorized, UnsupportedCurrency
from payments.logic.risk import assess
from payments.models import RiskDecision
from payments.records import load
from payments.tasks import TaskPayment

currencies = st.sampled_from(sorted(money.CURRENCY_EXPONENTS))
amounts = st.integers(min_value=money.MIN_AMOUNT, max_value=money.MAX_AMOUNT)


@given(amounts, currencies)
def test_minor_major_round_trip_is_exact(amount: int, currency: str) -> None:
    major = money.to_major(amount, currency)
    assert money.to_minor(major, currency) == amount
    assert major * (10 ** money.exponent(currency)) == amount


def test_exponents_follow_iso_4217() -> None:
    assert money.to_major(1999, "USD") == Decimal("19.99")
    assert money.to_major(1000, "JPY") == Decimal("1000")
    assert money.to_major(1000, "KRW") == Decimal("1000")
    assert money.to_major(1234, "KWD") == Decimal("1.234")
    assert money.format_amount(5, "BHD") == "0.005 BHD"


def test_to_minor_refuses_excess_precision_and_unknown_currency() -> None:
    with pytest.raises(InvalidAmount):
        money.to_minor("1.5", "JPY")
    with pytest.raises(UnsupportedCurrency):
        money.exponent("XXX")


@given(st.one_of(st.floats(), st.text(), st.booleans(), st.none(), st.integers(max_value=0)))
def test_validate_amount_rejects_non_positive_integers(value: object) -> None:
    with pytest.raises(InvalidAmount):
        money.validate_amount(value)


KEY = ApiKey(key_id="mk_test", merchant_id="merch_1", secret="s3cret")


def _auth(signature: str, ts: str, body: bytes, now: float, key_id: str = "mk_test") -> str:
    return authenticate(
        key_id=key_id,
        timestamp=ts,
        signature=signature,
        method="POST",
        path="/api/v1/payments",
        body=body,
        lookup=lambda k: KEY if k == "mk_test" else None,
        tolerance_seconds=300,
        now=now,
    ).merchant_id


@given(st.binary(max_size=512), st.integers(min_value=1_600_000_000, max_value=2_000_000_000))
def test_signed_requests_verify_and_any_change_breaks_them(body: bytes, ts: int) -> None:
    signature = sign("s3cret", str(ts), "POST", "/api/v1/payments", body)
    assert len(signature) == 64 and signature == signature.lower()
    assert _auth(signature, str(ts), body, now=ts) == "merch_1"
    with pytest.raises(Unauthorized):
        _auth(signature, str(ts), body + b"x", now=ts)
    with pytest.raises(Unauthorized):
        _auth(signature, str(ts + 1), body, now=ts)
    with pytest.raises(Unauthorized):
        _auth(signature, str(ts), body, now=ts + 301)
    with pytest.raises(Unauthorized):
        _auth(signature, str(ts), body, now=ts, key_id="mk_other")


def test_signature_formula_is_the_documented_one() -> None:
    # HMAC-SHA256("s3cret", "1700000000.POST./api/v1/payments.{}")
    import hashlib
    import hmac

    expected = hmac.new(
        b"s3cret", b"1700000000.POST./api/v1/payments.{}", hashlib.sha256
    ).hexdigest()
    assert sign("s3cret", "1700000000", "post", "/api/v1/payments", b"{}") == expected


def _task_payment(amount: int, customer: dict[str, str]) -> TaskPayment:
    return load(
        TaskPayment,
        {
            "payment_no": "pay_1",
            "merchant_id": "m",
            "merchant_order_no": "o",
            "amount": amount,
            "currency": "USD",
            "channel": "stripe",
            "payment_method": "pm_card_visa",
            "customer": customer,
            "created_at": "2026-01-01T00:00:00.000Z",
        },
    )


@pytest.mark.parametrize(
    ("country", "amount", "recent", "decision", "score"),
    [
        ("US", 100, 1, RiskDecision.APPROVE, 0),
        ("KP", 100, 1, RiskDecision.REJECT, 100),
        ("US", 500_000, 1, RiskDecision.REVIEW, 60),
        ("US", 499_999, 1, RiskDecision.APPROVE, 0),
        ("US", 100, 11, RiskDecision.REVIEW, 50),
        ("US", 100, 10, RiskDecision.APPROVE, 0),
        ("US", 500_000, 11, RiskDecision.REJECT, 100),
        ("IR", 500_000, 11, RiskDecision.REJECT, 100),
    ],
)
def test_risk_rules(
    country: str, amount: int, recent: int, decision: RiskDecision, score: int
) -> None:
    payment = _task_payment(amount, {"id": "cus_1", "country": country})
    result = assess(payment, Settings(), lambda _c: recent)
    assert (result.decision, result.score) == (decision, score)


def test_risk_rules_are_configurable_from_the_environment() -> None:
    settings = Settings.from_environ(
        {
            "RISK_BLOCKED_COUNTRIES": "ru, by",
            "RISK_REVIEW_AMOUNT_MINOR": "100",
            "RISK_VELOCITY_LIMIT": "2",
        }
    )
    assert settings.risk_blocked_countries == frozenset({"RU", "BY"})
    assert assess(_task_payment(100, {"country": "US"}), settings, lambda _c: 0).score == 60
    assert (
        assess(_task_payment(1, {"id": "c", "country": "RU"}), settings, lambda _c: 3).score == 100
    )


def test_invalid_settings_fail_at_cold_start() -> None:
    with pytest.raises(ValueError):
        Settings.from_environ({"STRIPE_READ_TIMEOUT_SECONDS": "-1"})
    with pytest.raises(ValueError):
        Settings.from_environ({"RISK_VELOCITY_LIMIT": "many"})
