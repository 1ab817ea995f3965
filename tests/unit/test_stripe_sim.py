"""The Stripe simulator, driven through werkzeug's test client (no sockets).

Over real HTTP with the stripe SDK: test_stripe_sim_sdk.py and test_stripe_sim_webhooks.py.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from local.stripe_sim import (
    FAULT_MODES,
    Fault,
    StripeError,
    StripeSimulator,
    fault_from_env,
    make_app,
    parse_form,
)
from local.stripe_sim.faults import FaultRules, FaultTarget
from local.stripe_sim.search import compile_query

AUTH = {"Authorization": "Bearer sk_test_123"}


def js(resp: TestResponse) -> Any:
    body = resp.get_json()
    assert body is not None, resp.data
    return body


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> StripeSimulator:
    monkeypatch.delenv("STRIPE_SIM_FAULT", raising=False)
    return make_app(api_key="rk_custom_key")


@pytest.fixture
def client(sim: StripeSimulator) -> Client:
    return Client(sim)


def charge(
    client: Client, pm: str = "pm_card_visa", key: str | None = None, **extra: str
) -> TestResponse:
    form = {
        "amount": "1000",
        "currency": "usd",
        "payment_method": pm,
        "confirm": "true",
        "payment_method_types[]": "card",
        "metadata[payment_no]": "pay_1",
        **extra,
    }
    headers = dict(AUTH)
    if key:
        headers["Idempotency-Key"] = key
    return client.post("/v1/payment_intents", data=form, headers=headers)


def refund(
    client: Client, pi: str, amount: int | None = None, key: str | None = None
) -> TestResponse:
    form = {"payment_intent": pi}
    if amount is not None:
        form["amount"] = str(amount)
    headers = dict(AUTH, **({"Idempotency-Key": key} if key else {}))
    return client.post("/v1/refunds", data=form, headers=headers)


@pytest.mark.parametrize("pm", ["pm_card_visa", "pm_card_mastercard"])
def test_charge_succeeds(client: Client, pm: str) -> None:
    resp = charge(client, pm)
    assert resp.status_code == 200
    body = js(resp)
    assert body["id"].startswith("pi_")
    assert body["latest_charge"].startswith("ch_")
    assert body["status"] == "succeeded"
    assert (body["amount"], body["amount_received"], body["currency"]) == (1000, 1000, "usd")
    assert body["metadata"] == {"payment_no": "pay_1"}
    got = client.get(f"/v1/payment_intents/{body['id']}", headers=AUTH)
    assert got.status_code == 200 and js(got)["id"] == body["id"]


@pytest.mark.parametrize(
    ("pm", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ],
)
def test_declines_are_402_card_errors(client: Client, pm: str, decline_code: str) -> None:
    resp = charge(client, pm)
    assert resp.status_code == 402
    err = js(resp)["error"]
    assert err["type"] == "card_error"
    assert err["code"] == "card_declined"
    assert err["decline_code"] == decline_code
    assert err["payment_intent"]["status"] == "requires_payment_method"


def test_unknown_payment_method_and_bad_params_are_400(client: Client) -> None:
    assert js(charge(client, "pm_card_bogus"))["error"]["code"] == "resource_missing"
    for bad in ("0", "-5", "10.5", "abc"):
        resp = charge(client, amount=bad)
        assert resp.status_code == 400 and js(resp)["error"]["param"] == "amount"
    resp = client.post("/v1/payment_intents", data={"amount": "5"}, headers=AUTH)
    assert resp.status_code == 400 and js(resp)["error"]["param"] == "currency"


def test_idempotent_replay_returns_stored_response(client: Client, sim: StripeSimulator) -> None:
    first = charge(client, key="k1")
    second = charge(client, key="k1")
    assert second.status_code == 200
    assert js(second)["id"] == js(first)["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(sim.payment_intents()) == 1
    # Declines are stored too: a retried decline is not a second attempt.
    d1 = charge(client, "pm_card_chargeDeclined", key="k2")
    d2 = charge(client, "pm_card_chargeDeclined", key="k2")
    assert d2.status_code == 402 and d2.headers["Idempotent-Replayed"] == "true"
    assert js(d1) == js(d2)
    assert len(sim.payment_intents()) == 2


def test_key_reuse_with_other_params_is_rejected(client: Client, sim: StripeSimulator) -> None:
    charge(client, key="k1")
    resp = charge(client, key="k1", amount="2000")
    assert resp.status_code == 400
    assert js(resp)["error"]["type"] == "idempotency_error"
    assert len(sim.payment_intents()) == 1


def test_refunds_partial_then_over_refund(client: Client, sim: StripeSimulator) -> None:
    pi = js(charge(client))["id"]
    r1 = refund(client, pi, 300)
    assert r1.status_code == 200
    assert js(r1)["status"] == "succeeded" and js(r1)["amount"] == 300
    over = refund(client, pi, 800)
    assert over.status_code == 400 and js(over)["error"]["code"] == "amount_too_large"
    rest = refund(client, pi)  # default: the remaining amount
    assert js(rest)["amount"] == 700
    again = refund(client, pi, 1)
    assert js(again)["error"]["code"] == "charge_already_refunded"
    [listed] = sim.payment_intents()
    assert [r["amount"] for r in listed["refunds"]] == [300, 700]


def test_refund_idempotency_and_unknown_intent(client: Client, sim: StripeSimulator) -> None:
    pi = js(charge(client))["id"]
    a = refund(client, pi, 100, key="r1")
    b = refund(client, pi, 100, key="r1")
    assert js(a)["id"] == js(b)["id"] and b.headers["Idempotent-Replayed"] == "true"
    assert len(sim.payment_intents()[0]["refunds"]) == 1
    assert js(refund(client, "pi_missing"))["error"]["code"] == "resource_missing"
    declined = js(charge(client, "pm_card_chargeDeclined"))["error"]["payment_intent"]["id"]
    assert refund(client, declined).status_code == 400


def test_refund_fail_card_charges_but_refunds_fail(client: Client, sim: StripeSimulator) -> None:
    resp = charge(client, "pm_card_refundFail")
    assert resp.status_code == 200 and js(resp)["status"] == "succeeded"
    r = refund(client, js(resp)["id"], 500)
    assert r.status_code == 200
    assert js(r)["object"] == "refund"
    assert js(r)["status"] == "failed" and js(r)["failure_reason"] == "declined"
    # A failed refund doesn't consume the refundable amount.
    assert js(refund(client, js(resp)["id"], 1000))["status"] == "failed"


def test_auth_required(client: Client) -> None:
    form = {"amount": "100", "currency": "usd", "payment_method": "pm_card_visa"}
    none = client.post("/v1/payment_intents", data=form)
    assert none.status_code == 401 and js(none)["error"]["type"] == "invalid_request_error"
    bad = client.post("/v1/payment_intents", data=form, headers={"Authorization": "Bearer sk_x"})
    assert bad.status_code == 401
    ok = client.post(
        "/v1/payment_intents", data=form, headers={"Authorization": "Bearer rk_custom_key"}
    )
    assert ok.status_code == 200
    assert client.get("/v1/payment_intents/pi_x").status_code == 401


def test_fault_error_with_count_reverts(client: Client) -> None:
    set_resp = client.post("/_sim/fault", json={"mode": "error", "count": 2})
    assert set_resp.status_code == 200
    for _ in range(2):
        resp = charge(client)
        assert resp.status_code == 500 and js(resp)["error"]["type"] == "api_error"
    assert js(client.get("/_sim/fault"))["mode"] == "none"
    assert charge(client).status_code == 200


def test_fault_knob_accepts_json_sent_as_a_form_like_curl_d(client: Client) -> None:
    resp = client.post(
        "/_sim/fault",
        data='{"mode":"error"}',
        content_type="application/x-www-form-urlencoded",  # what `curl -d` sends
    )
    assert resp.status_code == 200 and js(resp)["mode"] == "error"
    assert charge(client).status_code == 500


def test_fault_error_without_count_persists_until_cleared(client: Client) -> None:
    client.post("/_sim/fault", json={"mode": "error"})
    assert [charge(client).status_code for _ in range(3)] == [500, 500, 500]
    client.post("/_sim/fault", json={"mode": "none"})
    assert charge(client).status_code == 200


def test_fault_error_is_saved_under_the_key_and_replays(
    client: Client, sim: StripeSimulator
) -> None:
    # Stripe saves a keyed request's first response once execution began, 500s included.
    client.post("/_sim/fault", json={"mode": "error", "count": 1})
    first = charge(client, key="k")
    assert first.status_code == 500 and first.headers["Stripe-Should-Retry"] == "false"
    retry = charge(client, key="k")
    assert retry.status_code == 500 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["Stripe-Should-Retry"] == "false"
    assert js(retry) == js(first)
    assert sim.payment_intents() == []  # `error` fails before any side effect
    assert charge(client, key="k2").status_code == 200  # a new key runs


def test_fault_hang_delays_then_answers(client: Client) -> None:
    client.post("/_sim/fault", json={"mode": "hang", "count": 1, "hang_seconds": 0.2})
    start = time.monotonic()
    assert charge(client).status_code == 200
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    charge(client)
    assert time.monotonic() - start < 0.2


def test_fault_validation_and_env(client: Client) -> None:
    assert client.post("/_sim/fault", json={"mode": "explode"}).status_code == 400
    assert client.post("/_sim/fault", json={"mode": "error", "count": 0}).status_code == 400
    fault = fault_from_env({"STRIPE_SIM_FAULT": "error:3", "STRIPE_SIM_HANG_SECONDS": "1.5"})
    assert (fault.mode, fault.count, fault.hang_seconds) == ("error", 3, 1.5)
    assert fault_from_env({}).mode == "none"


def test_env_fault_applies_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_SIM_FAULT", "error")
    assert charge(Client(make_app())).status_code == 500


def test_reset_and_listing(client: Client, sim: StripeSimulator) -> None:
    charge(client, **{"metadata[payment_no]": "pay_a"})
    charge(client, **{"metadata[payment_no]": "pay_b"})
    listed = js(client.get("/_sim/payment_intents"))["data"]
    assert sorted(i["metadata"]["payment_no"] for i in listed) == ["pay_a", "pay_b"]
    client.post("/_sim/fault", json={"mode": "error"})
    assert client.post("/_sim/reset").status_code == 200
    assert js(client.get("/_sim/payment_intents"))["data"] == []
    assert js(client.get("/_sim/fault"))["mode"] == "none"


def test_unknown_routes(client: Client) -> None:
    assert client.post("/v1/customers", headers=AUTH).status_code == 404
    # Like Stripe: an unsupported method on a known path is an unrecognized URL (404).
    assert client.delete("/v1/refunds", headers=AUTH).status_code == 404
    assert client.get("/v1/payment_intents/pi_nope", headers=AUTH).status_code == 404
    assert client.get("/_sim/nope").status_code == 404


# ---- form encoding, search language, fault rules, admin API ---------------------------


def test_parse_form_bracket_notation() -> None:
    form = [
        ("amount", "5"),
        ("metadata[payment_no]", "p1"),
        ("payment_method_types[0]", "card"),
        ("payment_method_types[1]", "link"),
        ("tags[]", "a"),
        ("tags[]", "b"),
        ("items[0][price]", "x"),
    ]
    assert parse_form(form) == {
        "amount": "5",
        "metadata": {"payment_no": "p1"},
        "payment_method_types": ["card", "link"],
        "tags": ["a", "b"],
        "items": [{"price": "x"}],
    }
    with pytest.raises(StripeError):
        parse_form([("a", "1"), ("a[b]", "2")])
    with pytest.raises(StripeError):
        parse_form([("a[", "1")])


def test_search_query_subset() -> None:
    obj = {"status": "succeeded", "amount": 500, "currency": "usd", "metadata": {"k": "v"}}
    assert compile_query("metadata['k']:'v' AND status:'succeeded'")(obj)
    assert compile_query('metadata["k"]:"v"')(obj)
    assert not compile_query("metadata['k']:'w'")(obj)
    assert compile_query("amount>499 AND amount<=500 AND currency:'usd'")(obj)
    assert not compile_query("amount:499")(obj)
    for bad, why in [
        ("status:'a' OR status:'b'", "OR"),
        ("-status:'a'", "negation"),
        ("status~'suc'", "substring"),
        ("customer:'cus_1'", "customer"),
        ("status:succeeded", "status:'value'"),
        ("amount:'5'", "unquoted"),
        ("", "empty"),
    ]:
        with pytest.raises(StripeError) as info:
            compile_query(bad)
        assert info.value.status == 400 and why in info.value.body["error"]["message"], bad


def test_fault_rules_first_match_count_path_match_method() -> None:
    rules = FaultRules()
    everything = frozenset(FAULT_MODES)

    def target(path: str = "/v1/refunds", method: str = "POST", *values: str) -> FaultTarget:
        return FaultTarget(method, path, values, everything)

    rules.add(Fault(mode="error", count=1, match="order-7"))
    rules.add(Fault(mode="hang", path="/v1/refunds", method="POST", hang_seconds=0.1))
    taken = rules.take(target("/v1/payment_intents", "POST", "order-7x"))
    assert taken is not None and taken.mode == "error"
    assert rules.take(target("/v1/payment_intents", "POST", "order-7x")) is None  # spent
    assert [r.mode for r in rules.rules()] == ["hang"]
    assert rules.take(target("/v1/refunds", "GET")) is None  # method filter
    hang = rules.take(target())
    assert hang is not None and hang.hang_seconds == 0.1
    # Only applicable modes match: a replay can't take `hang`.
    assert rules.take(FaultTarget("POST", "/v1/refunds", (), frozenset({"drop"}))) is None
    assert rules.replace_all(Fault()).mode == "none" and rules.rules() == []


def test_fault_admin_routes(client: Client) -> None:
    one = js(client.post("/_sim/fault", json={"mode": "rate_limit", "count": 1, "path": "/v1"}))
    assert one["id"] and one["mode"] == "rate_limit"
    added = js(client.post("/_sim/faults", json={"mode": "error", "match": "pay_9"}))
    listed = js(client.get("/_sim/faults"))["data"]
    assert [r["id"] for r in listed] == [one["id"], added["id"]]
    assert js(client.get("/_sim/fault"))["id"] == one["id"]
    limited = charge(client)
    assert limited.status_code == 429 and limited.headers["Stripe-Should-Retry"] == "true"
    assert js(limited)["error"]["code"] == "rate_limit"
    assert charge(client).status_code == 200
    assert charge(client, **{"metadata[payment_no]": "pay_9"}).status_code == 500
    assert js(client.delete("/_sim/faults")) == {"data": []}
    assert js(client.get("/_sim/fault"))["mode"] == "none"
    for bad in (
        {"mode": "error", "path": "v1"},
        {"mode": "error", "match": ""},
        {"mode": "error", "method": "PUT"},
        {"mode": "error", "colour": "red"},
    ):
        assert client.post("/_sim/faults", json=bad).status_code == 400, bad


def test_env_fault_modes_and_bad_values() -> None:
    fault = fault_from_env({"STRIPE_SIM_FAULT": "rate_limit:2"})
    assert (fault.mode, fault.count) == ("rate_limit", 2)
    with pytest.raises(StripeError):
        fault_from_env({"STRIPE_SIM_FAULT": "error:x"})


def test_config_route_sets_search_delay(client: Client, sim: StripeSimulator) -> None:
    assert (
        js(client.post("/_sim/config", json={"search_delay_seconds": 0}))["search_delay_seconds"]
        == 0
    )
    assert sim.search_delay_seconds == 0
    pi = js(charge(client))["id"]
    query = {"query": "metadata['payment_no']:'pay_1'"}
    found = js(client.get("/v1/payment_intents/search", query_string=query, headers=AUTH))
    assert [i["id"] for i in found["data"]] == [pi]
    assert client.post("/_sim/config", json={"search_delay_seconds": -1}).status_code == 400
    assert client.post("/_sim/config", json={"other": 1}).status_code == 400
    assert make_app(environ={"STRIPE_SIM_SEARCH_DELAY_SECONDS": "0.5"}).search_delay_seconds == 0.5


def test_conflict_is_not_saved_and_needs_a_key(client: Client, sim: StripeSimulator) -> None:
    sim.set_fault("conflict", count=1)
    assert charge(client).status_code == 200  # no key: nothing to conflict on
    conflict = charge(client, key="k")
    assert conflict.status_code == 409 and conflict.headers["Stripe-Should-Retry"] == "true"
    assert js(conflict)["error"]["code"] == "idempotency_key_in_use"
    again = charge(client, key="k")
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers


def test_drop_without_a_socket_raises(client: Client, sim: StripeSimulator) -> None:
    sim.set_fault("drop", count=1)
    with pytest.raises(ConnectionAbortedError):
        charge(client, key="k")
    replay = charge(client, key="k")  # the charge happened and its result was saved
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"


def test_basic_auth_and_long_keys(client: Client) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(b"sk_test_x:").decode()}
    assert client.get("/v1/payment_intents", headers=basic).status_code == 200
    long_key = charge(client, key="k" * 256)
    assert (
        long_key.status_code == 400 and js(long_key)["error"]["code"] == "idempotency_key_too_long"
    )


def test_admin_listing_includes_refunds_and_reset_keeps_config(
    client: Client, sim: StripeSimulator
) -> None:
    pi = js(charge(client))["id"]
    refund(client, pi, 250)
    [listed] = js(client.get("/_sim/payment_intents"))["data"]
    assert [r["amount"] for r in listed["refunds"]] == [250]
    sim.search_delay_seconds = 0.3
    client.post("/_sim/reset")
    assert sim.payment_intents() == [] and sim.search_delay_seconds == 0.3
    assert js(client.get("/v1/events", headers=AUTH))["data"] == []
