"""The Stripe simulator over real HTTP, with the official stripe-python SDK as the client.

The SDK is the judge: its error classes, its retry logic (`Stripe-Should-Retry`, 409s) and
its pagination helpers must work against the simulator as they do against api.stripe.com.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import stripe
from stripe._http_client import HTTPClient
from werkzeug.wrappers import Request, Response

from local.stripe_sim import SimServer, StripeSimulator, serve

API_KEY = "sk_test_sim_sdk"
SEARCH_DELAY = 0.2


class CountingSim(StripeSimulator):
    """The simulator, plus what reached /v1: (method, path, Idempotency-Key, status)."""

    def __init__(self) -> None:
        super().__init__(search_delay_seconds=SEARCH_DELAY)
        self.seen: list[tuple[str, str, str | None, int]] = []
        self._seen_lock = threading.Lock()

    def dispatch(self, request: Request) -> Response:
        response = super().dispatch(request)
        if request.path.startswith("/v1/"):
            key = request.headers.get("Idempotency-Key")
            with self._seen_lock:
                self.seen.append((request.method, request.path, key, response.status_code))
        return response

    def clear(self) -> None:
        self.reset()
        self.search_delay_seconds = SEARCH_DELAY
        with self._seen_lock:
            self.seen.clear()


@pytest.fixture(autouse=True)
def fast_sdk_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK sleeps >= 0.5 s between retries; the behaviour under test is whether it retries.
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.02)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    handle = serve(port=0, app=CountingSim())
    yield handle
    handle.stop()


@pytest.fixture
def sim(server: SimServer) -> CountingSim:
    app = server.app
    assert isinstance(app, CountingSim)
    app.clear()
    return app


def sdk(server: SimServer, retries: int = 0, api_key: str = API_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key, base_addresses={"api": server.url}, max_network_retries=retries
    )


@pytest.fixture
def client(server: SimServer, sim: CountingSim) -> stripe.StripeClient:
    return sdk(server)


def pay(
    client: stripe.StripeClient,
    pm: str = "pm_card_visa",
    *,
    key: str | None = None,
    order: str = "order-1",
    amount: int = 1000,
    confirm: bool = True,
) -> stripe.PaymentIntent:
    params: Any = {
        "amount": amount,
        "currency": "usd",
        "payment_method": pm,
        "confirm": confirm,
        "payment_method_types": ["card"],
        "metadata": {"payment_no": f"pay-{order}", "merchant_order_no": order},
    }
    return client.v1.payment_intents.create(params=params, options={"idempotency_key": key})


def admin(server: SimServer, method: str, path: str, body: Any = None) -> Any:
    response = requests.request(method, f"{server.url}{path}", json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def wait_for(condition: Callable[[], Any], timeout: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def headers(obj: stripe.StripeObject) -> Any:
    assert obj.last_response is not None
    return obj.last_response.headers


# ---- payment intents -------------------------------------------------------------------


def test_create_confirm_succeeds_retrieve_and_charge(client: stripe.StripeClient) -> None:
    intent = pay(client)
    assert isinstance(intent, stripe.PaymentIntent)
    assert intent.object == "payment_intent" and intent.id.startswith("pi_")
    assert (intent.status, intent.amount, intent.amount_received) == ("succeeded", 1000, 1000)
    assert intent.currency == "usd" and intent.livemode is False
    assert intent.payment_method == "pm_card_visa" and intent.last_payment_error is None
    assert intent.metadata.to_dict() == {
        "payment_no": "pay-order-1",
        "merchant_order_no": "order-1",
    }
    assert isinstance(intent.created, int) and abs(intent.created - time.time()) < 5
    got = client.v1.payment_intents.retrieve(intent.id)
    assert got.to_dict() == intent.to_dict()
    assert isinstance(intent.latest_charge, str)
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.status, charge.amount_captured, charge.payment_intent) == (
        "succeeded",
        1000,
        intent.id,
    )
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.retrieve("pi_missing")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"


@pytest.mark.parametrize(
    ("pm", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ],
)
def test_declines_raise_card_error(client: stripe.StripeClient, pm: str, decline_code: str) -> None:
    with pytest.raises(stripe.CardError) as info:
        pay(client, pm)
    err = info.value
    assert err.http_status == 402 and err.code == "card_declined"
    assert err.error is not None and err.error.decline_code == decline_code
    intent = err.error.payment_intent
    assert intent is not None and intent.status == "requires_payment_method"
    stored = client.v1.payment_intents.retrieve(intent.id)
    assert stored.last_payment_error is not None
    assert stored.last_payment_error.decline_code == decline_code
    assert stored.amount_received == 0


def test_confirm_later_and_cancel(client: stripe.StripeClient) -> None:
    draft = pay(client, confirm=False)
    assert draft.status == "requires_confirmation" and draft.latest_charge is None
    confirmed = client.v1.payment_intents.confirm(draft.id)
    assert confirmed.status == "succeeded" and confirmed.latest_charge is not None
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.payment_intents.cancel(confirmed.id)
    assert info.value.code == "payment_intent_unexpected_state"
    other = pay(client, confirm=False, order="order-2")
    canceled = client.v1.payment_intents.cancel(
        other.id, params={"cancellation_reason": "abandoned"}
    )
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "abandoned")
    assert canceled.canceled_at is not None


def test_unknown_parameters_are_rejected_like_stripe(client: stripe.StripeClient) -> None:
    params: Any = {"amount": 10, "currency": "usd", "colour": "blue"}
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.payment_intents.create(params=params)
    assert info.value.code == "parameter_unknown" and info.value.param == "colour"


# ---- list and search -------------------------------------------------------------------


def test_list_is_newest_first_with_cursor_pagination(client: stripe.StripeClient) -> None:
    ids = [pay(client, order=f"o{i}").id for i in range(5)]
    newest_first = list(reversed(ids))
    page = client.v1.payment_intents.list(params={"limit": 2})
    assert page.object == "list" and page.url == "/v1/payment_intents"
    assert [p.id for p in page.data] == newest_first[:2] and page.has_more is True
    assert [p.id for p in page.auto_paging_iter()] == newest_first
    after = client.v1.payment_intents.list(params={"limit": 2, "starting_after": ids[1]})
    assert [p.id for p in after.data] == [ids[0]] and after.has_more is False
    before = client.v1.payment_intents.list(params={"limit": 2, "ending_before": ids[1]})
    assert [p.id for p in before.data] == [ids[3], ids[2]] and before.has_more is True
    for bad in (0, 101):
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.payment_intents.list(params={"limit": bad})
        assert info.value.param == "limit"


def test_search_lags_behind_writes_retrieve_and_list_do_not(
    client: stripe.StripeClient,
) -> None:
    query = "metadata['merchant_order_no']:'fresh-1'"
    draft = pay(client, confirm=False, order="fresh-1")
    assert client.v1.payment_intents.search(params={"query": query}).data == []
    assert client.v1.payment_intents.retrieve(draft.id).id == draft.id
    assert [p.id for p in client.v1.payment_intents.list().data] == [draft.id]
    time.sleep(SEARCH_DELAY + 0.05)
    [found] = client.v1.payment_intents.search(params={"query": query}).data
    assert (found.id, found.status) == (draft.id, "requires_confirmation")
    client.v1.payment_intents.confirm(draft.id)
    # The index still holds the version from before the change.
    both = f"{query} AND status:'succeeded'"
    assert client.v1.payment_intents.search(params={"query": both}).data == []
    [stale] = client.v1.payment_intents.search(params={"query": query}).data
    assert stale.status == "requires_confirmation"
    time.sleep(SEARCH_DELAY + 0.05)
    [fresh] = client.v1.payment_intents.search(params={"query": both}).data
    assert fresh.status == "succeeded"


def test_search_pages_and_rejects_unsupported_queries(
    client: stripe.StripeClient, sim: CountingSim
) -> None:
    sim.search_delay_seconds = 0
    ids = [pay(client, order="same", key=f"k{i}", amount=100 + i).id for i in range(3)]
    pay(client, order="other")
    query = "metadata['merchant_order_no']:'same' AND amount>=100 AND currency:'usd'"
    result = client.v1.payment_intents.search(params={"query": query, "limit": 2})
    assert result.object == "search_result" and result.url == "/v1/payment_intents/search"
    assert result.has_more is True and result.next_page
    assert [p.id for p in result.auto_paging_iter()] == list(reversed(ids))
    for bad in ("status:'a' OR status:'b'", "-status:'a'", "customer:'cus_1'", "status:a"):
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.payment_intents.search(params={"query": bad})
        assert info.value.http_status == 400 and info.value.param == "query"


# ---- refunds ---------------------------------------------------------------------------


def test_refunds_create_list_retrieve_and_limits(client: stripe.StripeClient) -> None:
    intent = pay(client)
    meta = {"refund_no": "rf-1", "payment_no": "pay-order-1"}
    first = client.v1.refunds.create(
        params={"payment_intent": intent.id, "amount": 300, "metadata": meta}
    )
    assert first.object == "refund" and first.status == "succeeded"
    assert (first.amount, first.payment_intent, first.charge) == (
        300,
        intent.id,
        intent.latest_charge,
    )
    assert first.metadata.to_dict() == meta and first.failure_reason is None
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 701})
    assert too_much.value.code == "amount_too_large"
    assert isinstance(intent.latest_charge, str)
    rest = client.v1.refunds.create(params={"charge": intent.latest_charge})
    assert rest.amount == 700
    assert client.v1.refunds.retrieve(first.id).to_dict() == first.to_dict()
    listed = client.v1.refunds.list(params={"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [rest.id, first.id]
    by_charge = client.v1.refunds.list(params={"charge": intent.latest_charge, "limit": 1})
    assert [r.id for r in by_charge.auto_paging_iter()] == [rest.id, first.id]
    pay(client, order="order-2")
    assert len(client.v1.refunds.list().data) == 2
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (1000, True)
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1})
    assert again.value.code == "charge_already_refunded"


def test_refund_fail_card_refunds_fail(client: stripe.StripeClient) -> None:
    intent = pay(client, "pm_card_refundFail")
    assert intent.status == "succeeded"
    refund = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 400})
    assert (refund.status, refund.failure_reason) == ("failed", "declined")
    # A failed refund gives the amount back: the whole charge is still refundable.
    second = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1000})
    assert second.status == "failed"


# ---- idempotency -----------------------------------------------------------------------


def test_same_key_replays_other_params_raise_keys_scoped_per_api_key(
    server: SimServer, client: stripe.StripeClient
) -> None:
    first = pay(client, key="order-1-charge")
    assert headers(first).get("Idempotent-Replayed") is None
    second = pay(client, key="order-1-charge")
    assert second.id == first.id
    assert headers(second)["Idempotent-Replayed"] == "true"
    assert headers(second)["Original-Request"] == headers(first)["Request-Id"]
    with pytest.raises(stripe.IdempotencyError) as info:
        pay(client, key="order-1-charge", amount=2000)
    assert info.value.http_status == 400
    with pytest.raises(stripe.IdempotencyError):  # another endpoint, same key
        client.v1.refunds.create(
            params={"payment_intent": first.id}, options={"idempotency_key": "order-1-charge"}
        )
    other_account = pay(sdk(server, api_key="sk_test_other"), key="order-1-charge")
    assert other_account.id != first.id
    assert len(client.v1.payment_intents.list().data) == 2


def test_validation_errors_are_not_saved(client: stripe.StripeClient) -> None:
    bad: Any = {"amount": 0, "currency": "usd", "payment_method": "pm_card_visa"}
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.payment_intents.create(params=bad, options={"idempotency_key": "k"})
    assert info.value.param == "amount"
    # Had the 400 been saved, other params with this key would raise IdempotencyError.
    assert pay(client, key="k").status == "succeeded"


# ---- faults against the SDK's own retry logic -------------------------------------------


def test_error_500_is_saved_and_the_sdk_does_not_retry_it(
    server: SimServer, sim: CountingSim
) -> None:
    sim.set_fault("error")
    retrying = sdk(server, retries=3)
    with pytest.raises(stripe.APIError) as info:
        pay(retrying, key="k-error")
    assert info.value.http_status == 500
    assert info.value.headers["Stripe-Should-Retry"] == "false"
    assert len(sim.seen) == 1, "Stripe-Should-Retry: false stops the SDK's retries"
    sim.set_fault("none")
    with pytest.raises(stripe.APIError) as replay:
        pay(retrying, key="k-error")
    assert replay.value.headers["Idempotent-Replayed"] == "true"
    assert sim.payment_intents() == []
    assert pay(retrying, key="k-new").status == "succeeded"


@pytest.mark.parametrize(
    ("mode", "status"), [("conflict", 409), ("rate_limit", 429), ("unavailable", 503)]
)
def test_sdk_retries_transient_refusals_and_succeeds(
    server: SimServer, sim: CountingSim, mode: str, status: int
) -> None:
    admin(server, "POST", "/_sim/fault", {"mode": mode, "count": 2})
    intent = pay(sdk(server, retries=2), key="k-transient")
    assert intent.status == "succeeded"
    assert [s for *_, s in sim.seen] == [status, status, 200]
    assert {k for _, _, k, _ in sim.seen} == {"k-transient"}
    assert headers(intent).get("Idempotent-Replayed") is None  # refusals were not saved
    assert len(sim.payment_intents()) == 1


@pytest.mark.parametrize(
    ("mode", "error_type", "code"),
    [
        ("conflict", stripe.APIError, "idempotency_key_in_use"),
        ("rate_limit", stripe.RateLimitError, "rate_limit"),
    ],
)
def test_refusals_without_retries_surface_as_sdk_errors(
    server: SimServer, sim: CountingSim, mode: str, error_type: type[Exception], code: str
) -> None:
    sim.set_fault(mode)
    with pytest.raises(error_type) as info:
        pay(sdk(server), key="k")
    err = info.value
    assert isinstance(err, stripe.StripeError) and err.headers["Stripe-Should-Retry"] == "true"
    assert err.error is not None and err.error.code == code
    assert sim.payment_intents() == []


def test_hang_shows_processing_and_a_concurrent_same_key_request_gets_409(
    server: SimServer, sim: CountingSim, client: stripe.StripeClient
) -> None:
    # `match`, not just the path: the polling GET below must not take the rule first.
    sim.set_fault("hang", count=1, hang_seconds=0.6, match="order-1")
    done: list[stripe.PaymentIntent] = []
    first = threading.Thread(target=lambda: done.append(pay(sdk(server), key="k-hang")))
    first.start()
    try:
        [listed] = wait_for(lambda: client.v1.payment_intents.list().data)
        assert listed.status == "processing"
        assert client.v1.payment_intents.retrieve(listed.id).status == "processing"
        with pytest.raises(stripe.APIError) as info:
            pay(client, key="k-hang")
        assert info.value.http_status == 409
        assert info.value.error is not None
        assert info.value.error.code == "idempotency_key_in_use"
    finally:
        first.join(timeout=5)
    [intent] = done
    assert (intent.id, intent.status) == (listed.id, "succeeded")
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    replay = pay(client, key="k-hang")
    assert replay.id == intent.id and headers(replay)["Idempotent-Replayed"] == "true"
    types = [e.type for e in client.v1.events.list().data]
    assert types[:3] == [
        "payment_intent.succeeded",
        "payment_intent.processing",
        "payment_intent.created",
    ]


def test_hung_refund_is_pending_and_holds_its_amount(
    server: SimServer, sim: CountingSim, client: stripe.StripeClient
) -> None:
    intent = pay(client)
    sim.set_fault("hang", count=1, hang_seconds=0.5, path="/v1/refunds", method="POST")
    done: list[stripe.Refund] = []
    params: Any = {"payment_intent": intent.id, "amount": 700}
    worker = threading.Thread(
        target=lambda: done.append(sdk(server).v1.refunds.create(params=params))
    )
    worker.start()
    try:
        [pending] = wait_for(lambda: client.v1.refunds.list().data)
        assert pending.status == "pending"
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 400})
        assert info.value.code == "amount_too_large"
    finally:
        worker.join(timeout=5)
    assert done[0].status == "succeeded"
    assert client.v1.refunds.retrieve(pending.id).status == "succeeded"


def test_error_after_charges_although_the_answer_is_500(
    server: SimServer, sim: CountingSim, client: stripe.StripeClient
) -> None:
    sim.set_fault("error_after", count=1)
    with pytest.raises(stripe.APIError) as info:
        pay(sdk(server, retries=2), key="k-after")
    assert info.value.http_status == 500 and len(sim.seen) == 1
    [intent] = client.v1.payment_intents.list().data
    assert intent.status == "succeeded" and intent.amount_received == 1000
    with pytest.raises(stripe.APIError) as replay:
        pay(client, key="k-after")
    assert replay.value.headers["Idempotent-Replayed"] == "true"


def test_drop_closes_the_connection_after_the_charge(
    server: SimServer, sim: CountingSim, client: stripe.StripeClient
) -> None:
    sim.set_fault("drop", count=1)
    with pytest.raises(stripe.APIConnectionError):
        pay(client, key="k-drop")
    [intent] = client.v1.payment_intents.list().data
    assert intent.status == "succeeded"
    replay = pay(client, key="k-drop")
    assert replay.id == intent.id and headers(replay)["Idempotent-Replayed"] == "true"


def test_the_sdk_recovers_a_dropped_response_by_retrying_with_its_key(
    server: SimServer, sim: CountingSim
) -> None:
    sim.set_fault("drop", count=1)
    intent = pay(sdk(server, retries=1))  # the SDK generates the key and reuses it
    assert headers(intent)["Idempotent-Replayed"] == "true"
    assert len(sim.payment_intents()) == 1


def test_a_500_on_a_read_is_worth_retrying(
    server: SimServer, sim: CountingSim, client: stripe.StripeClient
) -> None:
    intent = pay(client)
    sim.set_fault("error", count=1, method="GET", match=intent.id)
    assert sdk(server, retries=1).v1.payment_intents.retrieve(intent.id).id == intent.id
    assert [s for m, _, _, s in sim.seen if m == "GET"] == [500, 200]
    sim.set_fault("error", method="GET")
    with pytest.raises(stripe.APIError) as info:
        client.v1.payment_intents.list()
    assert info.value.headers["Stripe-Should-Retry"] == "true"


def test_rules_by_match_and_path_first_match_wins(
    server: SimServer, sim: CountingSim, client: stripe.StripeClient
) -> None:
    admin(server, "DELETE", "/_sim/faults")
    a = admin(server, "POST", "/_sim/faults", {"mode": "none", "match": "calm"})
    b = admin(server, "POST", "/_sim/faults", {"mode": "error", "match": "stormy"})
    c = admin(server, "POST", "/_sim/faults", {"mode": "rate_limit", "path": "/v1/refunds"})
    assert len({a["id"], b["id"], c["id"]}) == 3
    listed = admin(server, "GET", "/_sim/faults")["data"]
    assert [r["id"] for r in listed] == [a["id"], b["id"], c["id"]]
    with pytest.raises(stripe.APIError):
        pay(client, order="stormy-1")
    calm = pay(client, order="calm-1")
    assert pay(client, order="stormy-but-calm").status == "succeeded"  # the earlier rule wins
    with pytest.raises(stripe.RateLimitError):
        client.v1.refunds.create(params={"payment_intent": pay(client, order="x").id})
    # A refund names only the intent; rules also match the metadata of what it names.
    assert client.v1.refunds.create(params={"payment_intent": calm.id}).status == "succeeded"
    assert admin(server, "DELETE", "/_sim/faults") == {"data": []}


# ---- events ------------------------------------------------------------------------------


def test_events_list_filter_and_retrieve(client: stripe.StripeClient) -> None:
    intent = pay(client, key="k-events")
    client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 100})
    all_types = [e.type for e in client.v1.events.list().auto_paging_iter()]
    assert all_types == [
        "charge.refunded",
        "refund.created",
        "payment_intent.succeeded",
        "payment_intent.created",
    ]
    [succeeded] = client.v1.events.list(params={"type": "payment_intent.succeeded"}).data
    assert succeeded.data.object["id"] == intent.id
    assert succeeded.request is not None and succeeded.request.idempotency_key == "k-events"
    assert succeeded.api_version and succeeded.livemode is False
    assert client.v1.events.retrieve(succeeded.id).id == succeeded.id
    wild = client.v1.events.list(params={"type": "payment_intent.*"}).data
    assert {e.type for e in wild} == {"payment_intent.succeeded", "payment_intent.created"}
