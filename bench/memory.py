"""Memory: RSS of each function over 1,000 warm invocations, one fresh interpreter each.

One process = one execution environment hosting one function (as on Lambda), fully
instrumented (metrics with remote write and tracing at 100% to loopback receivers). The data
layer is on bounded in-memory fakes (so the fakes cannot grow); channel and refund use the
real Stripe client against the simulator on loopback; create_payment's workflow answers
canned (its task functions are measured on their own). Reported: RSS after invocation 100
and 1,000, peak RSS (VmHWM), growth between 100 and 1,000.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from bench.common import Json, child_main, create_payment_event, rss_mb
from local.events import api_event

GROWTH_TOLERANCE_MB = 1.0  # allocator noise; a leak of 1 KB per invocation shows as ~0.9 MB


def _child(spec: Json) -> Json:
    import os

    from bench import fakes
    from bench.warm import config_env

    os.environ.update(config_env("trace100", spec.get("sinks", {})))
    os.environ["STRIPE_API_BASE"] = spec.get("stripe", "http://127.0.0.1:9")
    os.environ["STRIPE_API_KEY"] = "sk_test_local"
    function, n = spec["function"], int(spec["n"])
    store = fakes.install(workflow="canned", real_channel=function in ("channel", "refund"))
    handler = fakes.load_handler(function)
    context_name = "CreatePaymentFunction" if function == "create_payment" else str(function)
    events = _events(function, store, spec)
    marks: dict[str, float] = {}
    errors = 0
    for i in range(1, n + 1):
        event = events(i)
        result = handler(json.loads(json.dumps(event)), fakes.Context(context_name))
        if isinstance(result, dict) and int(result.get("statusCode", 200)) >= 400:
            errors += 1
        if i in (100, n):
            marks[str(i)] = rss_mb()[0]
    _current, peak = rss_mb()
    first = marks.get("100", float("nan"))
    return {
        "function": function,
        "n": n,
        "errors": errors,
        "rss_at_100_mb": first,
        "rss_at_n_mb": marks[str(n)],
        "growth_mb": marks[str(n)] - first,
        "peak_rss_mb": peak,
    }


def _events(function: str, store: Any, spec: Json) -> Any:
    from payments.records import Payment, PaymentStatus, load

    def payment(i: int) -> dict[str, Any]:
        return {
            "payment_no": f"pay_{uuid.uuid4().hex[:24]}",
            "merchant_id": "merch_demo",
            "merchant_order_no": f"m-{i}",
            "amount": 1999,
            "currency": "USD",
            "channel": "stripe",
            "payment_method": "pm_card_visa",
            "customer": {"id": f"cus_{i % 50}", "country": "US"},
            "created_at": "2026-01-01T00:00:00Z",
        }

    if function == "create_payment":
        return lambda i: create_payment_event()
    if function == "risk_check":
        return lambda i: {"step": "RiskCheck", "trace_context": {}, "payment": payment(i)}
    if function == "channel":
        return lambda i: {
            "step": "ChannelPayment",
            "trace_context": {},
            "payment": payment(i),
            "order": {"order_no": f"ord_{i}", "status": "created"},
        }
    if function == "order":
        last: dict[str, Any] = {}

        def order_event(i: int) -> Json:
            if i % 2:
                last["payment"] = payment(i)
                return {
                    "step": "CreateOrder",
                    "trace_context": {},
                    "payment": last["payment"],
                    "action": "create",
                }
            order_no = "ord_" + last["payment"]["payment_no"].removeprefix("pay_")
            return {
                "step": "MarkOrderPaid",
                "trace_context": {},
                "payment": last["payment"],
                "action": "mark_paid",
                "order": {"order_no": order_no, "status": "created"},
            }

        return order_event
    if function == "refund":
        # Real charges in the simulator, refunded one minor unit at a time.
        from payments.channel import get_channel

        targets = []
        for i in range(int(spec.get("refund_payments", 10))):
            body = payment(i)
            charge = get_channel("stripe").charge(
                payment_no=body["payment_no"],
                merchant_order_no=body["merchant_order_no"],
                amount=10_000_000,
                currency="USD",
                payment_method="pm_card_visa",
                idempotency_key=f"charge-{body['payment_no']}",
            )
            stored = load(
                Payment,
                {
                    **body,
                    "amount": 10_000_000,
                    "status": PaymentStatus.SUCCEEDED,
                    "channel_reference": charge.channel_reference,
                    "refundable_amount": 10_000_000,
                    "updated_at": body["created_at"],
                },
            )
            store.payments.items[stored.payment_no] = stored
            targets.append(stored.payment_no)

        def refund_event(i: int) -> Json:
            payment_no = targets[i % len(targets)]
            return api_event(
                "POST",
                "/api/v1/payments/{payment_no}/refunds",
                path=f"/api/v1/payments/{payment_no}/refunds",
                body={"amount": 1},
                path_params={"payment_no": payment_no},
            )

        return refund_event
    raise ValueError(function)


if __name__ == "__main__":
    if not child_main(sys.argv[1:], _child):
        sys.exit("usage: python -m bench (this module runs as a child)")
