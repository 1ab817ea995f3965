"""payments.records: strict conversion at the JSON boundaries, and reprs that keep secrets out."""

from __future__ import annotations

import msgspec
import pytest

from payments.records import Payment, PaymentStatus, dump, dump_json, load, load_json, replace
from payments.tasks import TaskPayment, WorkflowOutcome, WorkflowOutput

TOKEN = "pm_card_secret_4242"
EMAIL = "jane.doe@example.com"
STORED = {
    "pk": "PAYMENT#pay_1",  # item keys the record does not know are ignored
    "payment_no": "pay_1",
    "merchant_id": "m",
    "merchant_order_no": "o-1",
    "status": "processing",
    "amount": 1999,
    "currency": "USD",
    "channel": "stripe",
    "payment_method": TOKEN,
    "customer": {"id": "cus_1", "email": EMAIL, "ip": "203.0.113.9", "country": "US"},
    "request_fingerprint": "f" * 64,
    "created_at": "2026-01-01T00:00:00.000Z",
    "updated_at": "2026-01-01T00:00:00.000Z",
}


def test_a_stored_item_round_trips_through_dump_and_load() -> None:
    payment = load(Payment, STORED)
    assert payment.status is PaymentStatus.PROCESSING and payment.amount == 1999
    assert payment.customer is not None and payment.customer.country == "US"
    data = dump(payment)
    assert "pk" not in data and data["status"] == "processing"
    assert load(Payment, data) == payment
    assert load_json(Payment, dump_json(payment)) == payment


@pytest.mark.parametrize(
    "change",
    [{"amount": "1999"}, {"amount": 19.99}, {"status": "lost"}, {"payment_no": None}],
)
def test_conversion_is_strict(change: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        load(Payment, {**STORED, **change})


def test_records_are_frozen_and_replace_makes_a_new_one() -> None:
    payment = load(Payment, STORED)
    with pytest.raises(AttributeError):
        payment.amount = 1  # type: ignore[misc]
    paid = replace(payment, status=PaymentStatus.SUCCEEDED)
    assert paid.status is PaymentStatus.SUCCEEDED and payment.status is PaymentStatus.PROCESSING


def test_reprs_never_show_card_tokens_contact_details_or_a_caught_cause() -> None:
    payment = load(Payment, STORED)
    task = load(TaskPayment, STORED)
    output = load(
        WorkflowOutput,
        {
            "payment": STORED,
            "outcome": "charge_unknown",
            "error": {"Error": "States.Timeout", "Cause": f"charge of {TOKEN} timed out"},
        },
    )
    assert output.outcome is WorkflowOutcome.CHARGE_UNKNOWN and output.error is not None
    assert output.error.cause is not None and TOKEN in output.error.cause  # kept, not shown
    for record in (payment, task, output):
        text = repr(record)
        assert record.__class__.__name__ in text and "pay_1" in text
        for secret in (TOKEN, EMAIL, "203.0.113.9", "f" * 64):
            assert secret not in text
