"""Unknown outcomes and reconciliation (SPEC §4) through the real handlers, the real ASL on
moto and the Stripe simulator: nothing unseen is booked as a failure, and after
reconciliation the ledger agrees with the provider."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from payments import services
from payments.channel import LookupFailed, get_channel
from payments.config import Settings, get_settings
from payments.logic.reconcile import Outcome, Reconciler
from tests.integration.conftest import Platform, metric, running_platform
from tests.support import api_event, payment_body

FRESHNESS = 0.4  # the reconciler's spacing; the simulator's search lags 0.2 s


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    with running_platform(
        RECONCILE_GRACE_SECONDS="0",
        RECONCILE_NO_CHARGE_AFTER_SECONDS="0",
        RECONCILE_SEARCH_FRESHNESS_SECONDS=str(FRESHNESS),
        RECONCILE_BACKOFF_SECONDS="0",
    ) as running:
        running.sim_config(search_delay_seconds=0.2)
        yield running


def reconciler(**settings: Any) -> Reconciler:
    return Reconciler(
        services.payment_store(),
        services.order_store(),
        get_channel,
        Settings.validate({**dataclasses.asdict(get_settings()), **settings}),
    )


def settle_all(platform: Platform, *, rounds: int = 8) -> None:
    """Run the real ReconcilerFunction until nothing is left unresolved (bounded)."""
    for _ in range(rounds):
        platform.invoke("ReconcilerFunction", {"source": "aws.scheduler"})
        backlog = services.reconciler().payments.backlog("PAYMENT", before="9999")[0]
        refunds = services.reconciler().payments.backlog("REFUND", before="9999")[0]
        if backlog == refunds == 0:
            return
        time.sleep(FRESHNESS)


def intents_of(platform: Platform, payment_no: str) -> list[dict[str, Any]]:
    return [i for i in platform.intents() if i["metadata"].get("payment_no") == payment_no]


def _order(platform: Platform, order_no: str) -> str:
    return str(platform.get_order(order_no)[1]["status"])


def test_hang_past_timeout_is_processing_then_reconciled_succeeded(platform: Platform) -> None:
    body = payment_body()
    platform.add_fault("hang", hang_seconds=1.6, count=1, match=body["merchant_order_no"])
    status, answer, _ = platform.pay(**body)
    assert status == 202 and answer["status"] == "processing"
    assert _order(platform, answer["order_no"]) == "created"  # never cancelled on an unknown
    time.sleep(1.0)  # the provider finishes the charge it was still executing
    settle_all(platform)
    _, got, _ = platform.get_payment(answer["payment_no"])
    assert got["status"] == "succeeded" and got["channel_reference"].startswith("pi_")
    assert _order(platform, answer["order_no"]) == "paid"
    [intent] = intents_of(platform, answer["payment_no"])  # exactly one charge
    assert intent["status"] == "succeeded" and intent["id"] == got["channel_reference"]


def test_saved_500_is_processing_then_failed_after_spaced_misses(platform: Platform) -> None:
    body = payment_body()
    platform.add_fault("error", count=1, match=body["merchant_order_no"])
    status, answer, _ = platform.pay(**body)
    assert status == 202 and answer["status"] == "processing"
    rec = reconciler()
    assert rec.reconcile_payment(answer["payment_no"], scheduled=True) is Outcome.UNKNOWN
    assert rec.reconcile_payment(answer["payment_no"], scheduled=True) is Outcome.UNKNOWN
    time.sleep(FRESHNESS)
    assert rec.reconcile_payment(answer["payment_no"], scheduled=True) is Outcome.FAILED
    _, got, _ = platform.get_payment(answer["payment_no"])
    assert got["status"] == "failed" and intents_of(platform, answer["payment_no"]) == []
    assert _order(platform, answer["order_no"]) == "cancelled"
    status, again, _ = platform.pay(**body)  # the order can be paid again
    assert status == 201 and again["payment_no"] != answer["payment_no"]


def test_charged_then_500_is_reconciled_succeeded(platform: Platform) -> None:
    body = payment_body()
    platform.add_fault("error_after", count=1, match=body["merchant_order_no"])
    status, answer, _ = platform.pay(**body)
    assert status == 202
    time.sleep(0.3)  # search freshness of the simulator
    assert reconciler().reconcile_payment(answer["payment_no"]) is Outcome.SUCCEEDED
    _, got, _ = platform.get_payment(answer["payment_no"])
    assert got["status"] == "succeeded" and len(intents_of(platform, answer["payment_no"])) == 1


def test_no_charge_is_never_concluded_while_a_request_may_be_in_flight(
    platform: Platform,
) -> None:
    body = payment_body()
    platform.add_fault("error", count=1, match=body["merchant_order_no"])
    _, answer, _ = platform.pay(**body)
    rec = reconciler(reconcile_no_charge_after_seconds=3600)
    for _ in range(3):
        assert rec.reconcile_payment(answer["payment_no"], scheduled=False) is Outcome.UNKNOWN
        time.sleep(FRESHNESS / 2)
    assert platform.get_payment(answer["payment_no"])[1]["status"] == "processing"


def test_retry_budget_exhausted_leaves_it_counted(platform: Platform) -> None:
    body = payment_body()
    platform.add_fault("error", count=1, match=body["merchant_order_no"])
    _, answer, _ = platform.pay(**body)

    class Silent:
        def find_intent(self, **_: Any) -> None:
            raise LookupFailed("provider down")

    rec = reconciler(reconcile_max_attempts=2)
    rec.channel_for = lambda _name: Silent()  # type: ignore[assignment,return-value]
    before = metric("reconciliation_total", kind="payment", outcome="exhausted")
    outcomes = [rec.reconcile_payment(answer["payment_no"], scheduled=True) for _ in range(3)]
    assert outcomes == [Outcome.LOOKUP_FAILED, Outcome.EXHAUSTED, Outcome.SKIPPED]
    assert metric("reconciliation_total", kind="payment", outcome="exhausted") == before + 1
    assert platform.get_payment(answer["payment_no"])[1]["status"] == "processing"
    # Still counted in the backlog (and so alerted) until an operator settles it.
    rec._report_backlog()
    assert metric("payments_unresolved", kind="payment") >= 1
    settle_all(platform)  # the real function skips it (exhausted) but the rest go on


def test_a_charge_surfacing_after_failure_is_refunded_and_counted(platform: Platform) -> None:
    body = payment_body()
    platform.add_fault("error", count=1, match=body["merchant_order_no"])
    _, answer, _ = platform.pay(**body)
    rec = reconciler()
    rec.reconcile_payment(answer["payment_no"], scheduled=True)
    time.sleep(FRESHNESS)
    assert rec.reconcile_payment(answer["payment_no"], scheduled=True) is Outcome.FAILED
    # The provider charges after all (a late execution): a webhook hint names it.
    late = get_channel("stripe").charge(
        payment_no=answer["payment_no"],
        merchant_order_no=body["merchant_order_no"],
        amount=body["amount"],
        currency=body["currency"],
        payment_method="pm_card_visa",
        idempotency_key=f"late-{uuid.uuid4().hex}",
    )
    before = metric("reconciliation_total", kind="payment", outcome="late_charge_refunded")
    outcome = rec.reconcile_payment(answer["payment_no"], reference=late.channel_reference)
    assert outcome is Outcome.LATE_CHARGE_REFUNDED
    assert metric("reconciliation_total", kind="payment", outcome="late_charge_refunded") == (
        before + 1
    )
    [intent] = [i for i in platform.intents() if i["id"] == late.channel_reference]
    assert (
        sum(r["amount"] for r in intent["refunds"] if r["status"] == "succeeded")
        == (body["amount"])
    )
    assert platform.get_payment(answer["payment_no"])[1]["status"] == "failed"


# ---- refunds -----------------------------------------------------------------------------


def _paid(platform: Platform, amount: int = 1000) -> dict[str, Any]:
    status, body, _ = platform.pay(amount=amount)
    assert status == 201, body
    return body


def test_refund_timeout_stays_pending_reserved_then_reconciled(platform: Platform) -> None:
    payment = _paid(platform)
    platform.add_fault("hang", hang_seconds=1.6, count=1, path="/v1/refunds")
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 400})
    assert status == 202 and body["status"] == "pending"
    status, over, _ = platform.refund(payment["payment_no"], {"amount": 700})
    assert status == 422 and over["error"]["code"] == "amount_exceeded"  # 400 stays reserved
    time.sleep(1.0)
    settle_all(platform)
    _, got, _ = platform.get_payment(payment["payment_no"])
    [refund] = got["refunds"]
    assert refund["status"] == "succeeded" and got["refunded_amount"] == 400
    [intent] = intents_of(platform, payment["payment_no"])
    assert sum(r["amount"] for r in intent["refunds"] if r["status"] == "succeeded") == 400


def test_refund_500_without_refund_releases_after_spaced_misses(platform: Platform) -> None:
    payment = _paid(platform)
    platform.add_fault("error", count=1, path="/v1/refunds")
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 1000})
    assert status == 202 and body["status"] == "pending"
    settle_all(platform)
    _, got, _ = platform.get_payment(payment["payment_no"])
    assert [r["status"] for r in got["refunds"]] == ["failed"]
    assert got["refunded_amount"] == 0
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 1000})
    assert status == 201 and body["payment_status"] == "refunded"  # released: refundable again


def test_refund_never_sent_is_503_forgotten_and_retryable_with_the_same_key(
    platform: Platform,
) -> None:
    payment = _paid(platform)
    platform.add_fault("rate_limit", count=2, path="/v1/refunds")
    key = {"Idempotency-Key": f"r-{uuid.uuid4().hex}"}
    status, body, headers = platform.refund(payment["payment_no"], {"amount": 300}, key)
    assert status == 503 and body["error"]["code"] == "channel_unavailable"
    assert int(headers["Retry-After"]) >= 1
    assert platform.get_payment(payment["payment_no"])[1]["refunds"] == []
    status, body, _ = platform.refund(payment["payment_no"], {"amount": 300}, key)
    assert status == 201 and body["refunded_amount"] == 300


def test_refund_key_is_scoped_to_the_payment(platform: Platform) -> None:
    a, b = _paid(platform), _paid(platform)
    key = {"Idempotency-Key": "same-key-on-two-payments"}
    first = platform.refund(a["payment_no"], {"amount": 100}, key)
    second = platform.refund(b["payment_no"], {"amount": 100}, key)
    assert first[0] == second[0] == 201
    assert first[1]["refund_no"] != second[1]["refund_no"]
    assert platform.get_payment(b["payment_no"])[1]["refunded_amount"] == 100


def test_concurrent_webhooks_reconciler_and_merchant_retries_never_double_apply(
    platform: Platform,
) -> None:
    payment = _paid(platform, amount=1000)
    platform.add_fault("hang", hang_seconds=1.2, count=1, path="/v1/refunds")
    key = {"Idempotency-Key": f"c-{uuid.uuid4().hex}"}
    status, pending, _ = platform.refund(payment["payment_no"], {"amount": 600}, key)
    assert status == 202
    time.sleep(1.4)
    rec = reconciler()
    errors: list[BaseException] = []

    def run(work: Any) -> None:
        try:
            work()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    jobs = [lambda: rec.reconcile_refund(payment["payment_no"], pending["refund_no"])] * 4
    jobs += [lambda: platform.refund(payment["payment_no"], {"amount": 600}, key)] * 3
    jobs += [lambda: platform.refund(payment["payment_no"], {"amount": 300})] * 3
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    _, got, _ = platform.get_payment(payment["payment_no"])
    [intent] = intents_of(platform, payment["payment_no"])
    provider = sum(r["amount"] for r in intent["refunds"] if r["status"] == "succeeded")
    assert got["refunded_amount"] == provider <= 1000
    assert sum(r["amount"] for r in got["refunds"] if r["status"] == "succeeded") == provider
    assert [r for r in got["refunds"] if r["refund_no"] == pending["refund_no"]][0]["amount"] == 600


# ---- the scheduled function and its metrics ----------------------------------------------------


def test_reconciler_function_reports_its_backlog(platform: Platform) -> None:
    result = platform.invoke("ReconcilerFunction", {"source": "aws.scheduler"})
    assert isinstance(result["outcomes"], dict)
    assert metric("payments_unresolved", kind="refund") >= 0


def test_list_payments_finds_an_orders_payments_newest_first(platform: Platform) -> None:
    body = payment_body()
    platform.add_fault("error", count=1, match=body["merchant_order_no"])
    _, first, _ = platform.pay(**body)
    rec = reconciler()
    rec.reconcile_payment(first["payment_no"], scheduled=True)
    time.sleep(FRESHNESS)
    rec.reconcile_payment(first["payment_no"], scheduled=True)
    _, second, _ = platform.pay(**body)
    page = platform.list_payments(merchant_order_no=body["merchant_order_no"])
    assert [p["payment_no"] for p in page["data"]] == [second["payment_no"], first["payment_no"]]
    assert [p["status"] for p in page["data"]] == ["succeeded", "failed"]
    one = platform.list_payments(merchant_order_no=body["merchant_order_no"], limit="1")
    assert one["has_more"] is True and len(one["data"]) == 1
    rest = platform.list_payments(
        merchant_order_no=body["merchant_order_no"], starting_after=second["payment_no"]
    )
    assert [p["payment_no"] for p in rest["data"]] == [first["payment_no"]]
    assert rest["has_more"] is False
    failed = platform.list_payments(status="failed", limit="100")
    assert all(p["status"] == "failed" for p in failed["data"])


def test_list_payments_rejects_bad_queries(platform: Platform) -> None:
    event = api_event("GET", "/api/v1/payments", path="/api/v1/payments")
    for query in ({"limit": "0"}, {"limit": "x"}, {"status": "weird"}, {"other": "1"}):
        event["queryStringParameters"] = query
        status, body, _ = platform.call("CreatePaymentFunction", event)
        assert status == 400 and body["error"]["code"] == "invalid_request", query


def test_duplicate_order_while_processing_but_same_key_finds_its_payment(
    platform: Platform,
) -> None:
    body = payment_body()
    platform.add_fault("error", count=1, match=body["merchant_order_no"])
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    event = api_event("POST", "/api/v1/payments", body=body, headers=key)
    status, first, _ = platform.call("CreatePaymentFunction", event)
    assert status == 202
    status, dup, _ = platform.pay(**body)  # another request for the same order
    assert status == 409 and dup["error"]["code"] == "duplicate_order"
    # The same request again after its idempotency record vanished (a crashed gateway):
    # it finds its own payment instead of a 409.
    from payments import idempotency

    services.reset()
    idempotency.reset()
    table = platform.aws.env["IDEMPOTENCY_TABLE"]
    ddb = platform.aws.client("dynamodb")
    for item in ddb.scan(TableName=table)["Items"]:
        ddb.delete_item(TableName=table, Key={"id": item["id"]})
    status, again, _ = platform.call(
        "CreatePaymentFunction", api_event("POST", "/api/v1/payments", body=body, headers=key)
    )
    assert status == 202 and again["payment_no"] == first["payment_no"]


def test_velocity_counts_each_payment_once_however_often_risk_runs(platform: Platform) -> None:
    customer = f"cus_{uuid.uuid4().hex[:8]}"
    task = {
        "step": "RiskCheck",
        "trace_context": {},
        "payment": {
            "payment_no": "pay_velocity_1",
            "merchant_id": "merch_demo",
            "merchant_order_no": "v-1",
            "amount": 100,
            "currency": "USD",
            "channel": "stripe",
            "payment_method": "pm_card_visa",
            "customer": {"id": customer},
            "created_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
        },
    }
    for _ in range(15):  # a step retried 15 times is still one payment
        result = platform.invoke("RiskCheckFunction", task)
    assert result["decision"] == "approve" and "velocity" not in result["reasons"]


def test_reconciliation_spans_link_to_the_payments_original_trace(platform: Platform) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from payments import observability
    from payments.observability import tracing

    body = payment_body()
    platform.add_fault("error_after", count=1, match=body["merchant_order_no"])
    status, answer, headers = platform.pay(**body)
    assert status == 202
    original = headers["X-Trace-ID"]
    exporter = InMemorySpanExporter()
    tracing.reset_for_tests()
    tracing.setup("reconciler", exporters=[exporter])
    try:
        time.sleep(0.3)
        assert reconciler().reconcile_payment(answer["payment_no"]) is Outcome.SUCCEEDED
        observability.container().flush(2.0, final=True)
        [span] = [s for s in exporter.get_finished_spans() if s.name == "reconcile payment"]
        assert span.context is not None and f"{span.context.trace_id:032x}" != original
        assert [f"{link.context.trace_id:032x}" for link in span.links] == [original]
        assert dict(span.attributes or {})["payment_no"] == answer["payment_no"]
    finally:
        tracing.reset_for_tests()


def test_items_left_for_an_operator_never_block_newer_ones(platform: Platform) -> None:
    from payments.models import Reconciliation
    from payments.store.payments import UnresolvedRef

    settle_all(platform)  # start from an empty backlog
    store = services.payment_store()
    stuck = []
    for _ in range(3):
        body = payment_body()
        platform.add_fault("error", count=1, match=body["merchant_order_no"])
        _, answer, _ = platform.pay(**body)
        ref = UnresolvedRef("PAYMENT", answer["payment_no"], None, "2000-01-01T00:00:00.000Z")
        store.record_reconciliation(
            ref, Reconciliation(attempts=30, exhausted=True), now="2026-01-01T00:00:00.000Z"
        )
        stuck.append(answer["payment_no"])
    body = payment_body()
    platform.add_fault("error_after", count=1, match=body["merchant_order_no"])
    _, fresh, _ = platform.pay(**body)
    time.sleep(0.3)
    counts = reconciler(reconcile_batch_size=2).run()
    assert counts.get("payment.succeeded") == 1, counts
    assert platform.get_payment(fresh["payment_no"])[1]["status"] == "succeeded"
    assert all(platform.get_payment(p)[1]["status"] == "processing" for p in stuck)
    assert metric("payments_unresolved", kind="payment") >= 3  # still counted and alerted


def test_a_charge_for_an_order_already_cancelled_is_refunded_not_lost(platform: Platform) -> None:
    from payments.logic import orders as order_logic

    body = payment_body()
    platform.add_fault("error_after", count=1, match=body["merchant_order_no"])
    _, answer, _ = platform.pay(**body)
    order_logic.cancel(answer["order_no"], services.order_store())  # as a compensation would
    time.sleep(0.3)
    assert reconciler().reconcile_payment(answer["payment_no"]) is Outcome.LATE_CHARGE_REFUNDED
    assert platform.get_payment(answer["payment_no"])[1]["status"] == "failed"
    [intent] = intents_of(platform, answer["payment_no"])
    assert sum(r["amount"] for r in intent["refunds"] if r["status"] == "succeeded") == 1999
