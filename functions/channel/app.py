"""Workflow task ChannelPayment: charge through the payment's channel.

A decline is a normal result; an unavailable channel raises ChannelUnavailable, which the
state machine catches by its error name to run the compensation.
"""

from __future__ import annotations

from typing import Any

from payments.channel import get_channel
from payments.observability import instrument, tracing


@instrument("channel-adapter")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    payment = event["payment"]
    result = get_channel(payment["channel"]).charge(
        payment_no=payment["payment_no"],
        amount=payment["amount"],
        currency=payment["currency"],
        payment_method=payment["payment_method"],
        idempotency_key=f"charge-{payment['payment_no']}",
    )
    tracing.annotate_step(**{"channel.outcome": result.outcome})
    if result.outcome != "succeeded":
        tracing.fail_step(f"declined: {result.decline_code}")
    return result.model_dump(mode="json")
