"""Workflow task ChannelPayment: charge through the payment's channel.

Every provider outcome is a result (succeeded, declined, unavailable, rejected, unknown);
the state machine routes on it. An exception here is a crash, which the state machine
treats as an unknown charge.
"""

from __future__ import annotations

from typing import Any

from payments.channel import CallOutcome, get_channel
from payments.observability import instrument, tracing
from payments.records import dump, load
from payments.tasks import ChannelTaskInput


@instrument("channel-adapter")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    task = load(ChannelTaskInput, event)
    payment = task.payment
    result = get_channel(payment.channel).charge(
        payment_no=payment.payment_no,
        merchant_order_no=payment.merchant_order_no,
        amount=payment.amount,
        currency=payment.currency,
        payment_method=payment.payment_method,
        # Derived from the payment: a re-run of the step can never charge twice.
        idempotency_key=f"charge-{payment.payment_no}",
    )
    tracing.annotate_step(**{"channel.outcome": result.outcome.value})
    if result.outcome is not CallOutcome.SUCCEEDED:
        detail = result.decline_code or (result.failure.code if result.failure else "")
        tracing.fail_step(f"{result.outcome.value}: {detail}")
    return dump(result)
