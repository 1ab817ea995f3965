"""Signed webhooks from the Stripe simulator to a local receiver, verified with the SDK."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import stripe

from local.stripe_sim import SimServer, StripeSimulator, WebhookEndpoint, make_app, serve

SECRET = "whsec_test_receiver"
Json = dict[str, Any]


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records what arrives and answers as told."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._statuses = deque(statuses or [])
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                with receiver._lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    status = receiver._statuses.popleft() if receiver._statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/webhooks/stripe"

    def events(self) -> list[Json]:
        with self._lock:
            return [json.loads(body) for _, _, body in self.requests]

    def wait(self, count: int, timeout: float = 2.0) -> list[tuple[str, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} deliveries, got {len(self.requests)}")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def started() -> Iterator[list[SimServer | Receiver]]:
    handles: list[SimServer | Receiver] = []
    yield handles
    for handle in reversed(handles):
        handle.stop()


def receiver(started: list[SimServer | Receiver], **kw: Any) -> Receiver:
    handle = Receiver(**kw)
    started.append(handle)
    return handle


def simulator(
    started: list[SimServer | Receiver], url: str | None = None, **endpoint: Any
) -> tuple[SimServer, stripe.StripeClient]:
    webhook = None
    if url is not None:
        webhook = WebhookEndpoint(
            url=url, **{"secrets": (SECRET,), "retry_seconds": 0.05, **endpoint}
        )
    handle = serve(port=0, app=make_app(webhook=webhook, environ={}))
    started.append(handle)
    client = stripe.StripeClient(
        "sk_test_hooks", base_addresses={"api": handle.url}, max_network_retries=0
    )
    return handle, client


def pay(
    client: stripe.StripeClient, pm: str = "pm_card_visa", key: str | None = None, **kw: Any
) -> stripe.PaymentIntent:
    params: Any = {
        "amount": 1000,
        "currency": "usd",
        "payment_method": pm,
        "confirm": True,
        "metadata": {"payment_no": "pay_1"},
        **kw,
    }
    return client.v1.payment_intents.create(params=params, options={"idempotency_key": key})


def deliveries(server: SimServer) -> list[Json]:
    data = requests.get(f"{server.url}/_sim/webhooks/deliveries", timeout=5).json()["data"]
    return list(data)


def wait_until(condition: Callable[[], Any], timeout: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_events_are_signed_like_stripe_and_verify_with_the_sdk(
    started: list[SimServer | Receiver],
) -> None:
    hook = receiver(started)
    _, client = simulator(started, hook.url)
    intent = pay(client, key="k-1")
    got = hook.wait(2)
    assert [json.loads(body)["type"] for *_, body in got] == [
        "payment_intent.created",
        "payment_intent.succeeded",
    ]
    for path, headers, body in got:
        assert path == "/webhooks/stripe"
        assert headers["Content-Type"].startswith("application/json")
        assert headers["User-Agent"].startswith("Stripe/")
        sig = headers["Stripe-Signature"]
        parts = dict(p.split("=", 1) for p in sig.split(","))
        assert set(parts) == {"t", "v1"} and abs(int(parts["t"]) - time.time()) < 5
        expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
        assert parts["v1"] == expected.hexdigest()
        event = stripe.Webhook.construct_event(body.decode(), sig, SECRET)
        assert event.object == "event" and event.id.startswith("evt_")
        assert event.data.object["id"] == intent.id and event.livemode is False
        assert event.request is not None and event.request.idempotency_key == "k-1"
        assert event.pending_webhooks == 1
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body.decode(), sig, "whsec_wrong")
        with pytest.raises(stripe.SignatureVerificationError):  # a tampered body
            stripe.Webhook.construct_event(body.decode().replace("1000", "9999"), sig, SECRET)
    assert json.loads(got[1][2])["data"]["object"]["status"] == "succeeded"


def test_delivery_never_blocks_the_api_and_honours_delay(
    started: list[SimServer | Receiver],
) -> None:
    hook = receiver(started, delay=0.4)
    _, client = simulator(started, hook.url, delay_seconds=0.2)
    start = time.monotonic()
    pay(client, confirm=False)
    assert time.monotonic() - start < 0.3
    time.sleep(0.1)
    assert hook.requests == []
    hook.wait(1)


def test_a_failed_delivery_is_retried_with_backoff_until_accepted(
    started: list[SimServer | Receiver],
) -> None:
    hook = receiver(started, statuses=[500, 503])
    server, client = simulator(started, hook.url, retry_seconds=0.05)
    pay(client, confirm=False)  # one event: payment_intent.created
    hook.wait(3)
    [event_id] = {e["id"] for e in hook.events()}
    log = wait_until(lambda: len(deliveries(server)) == 3 and deliveries(server))
    assert [(d["attempt"], d["status"], d["delivered"]) for d in log] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert {d["event_id"] for d in log} == {event_id}
    assert log[2]["at"] - log[1]["at"] >= 0.09  # the backoff doubles: 0.05, then 0.1
    assert client.v1.events.retrieve(event_id).pending_webhooks == 0


def test_delivery_gives_up_after_max_attempts(started: list[SimServer | Receiver]) -> None:
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    server, client = simulator(started, dead, max_attempts=3, retry_seconds=0.02)
    pay(client, confirm=False)
    log = wait_until(lambda: len(deliveries(server)) >= 3 and deliveries(server))
    time.sleep(0.2)
    assert len(deliveries(server)) == 3
    assert [d["attempt"] for d in log] == [1, 2, 3]
    assert {d["status"] for d in log} == {None} and all(d["error"] for d in log)
    [event] = client.v1.events.list().data
    assert event.pending_webhooks == 0


def test_resend_redelivers_the_same_event(started: list[SimServer | Receiver]) -> None:
    hook = receiver(started)
    server, client = simulator(started)
    config = {"url": hook.url, "secret": SECRET, "retry_seconds": 0.05}
    response = requests.post(f"{server.url}/_sim/webhooks", json=config, timeout=5)
    assert response.status_code == 200
    pay(client, confirm=False)
    [(_, _, body)] = hook.wait(1)
    event_id = json.loads(body)["id"]
    resent = requests.post(
        f"{server.url}/_sim/webhooks/resend", json={"event_id": event_id}, timeout=5
    )
    assert resent.json() == {"event_id": event_id, "queued": True}
    second = hook.wait(2)[1]
    assert json.loads(second[2])["id"] == event_id
    stripe.Webhook.construct_event(second[2].decode(), second[1]["Stripe-Signature"], SECRET)
    missing = requests.post(
        f"{server.url}/_sim/webhooks/resend", json={"event_id": "evt_nope"}, timeout=5
    )
    assert missing.status_code == 404
    requests.delete(f"{server.url}/_sim/webhooks", timeout=5).raise_for_status()
    unconfigured = requests.post(
        f"{server.url}/_sim/webhooks/resend", json={"event_id": event_id}, timeout=5
    )
    assert unconfigured.status_code == 400
    pay(client, confirm=False, description="after delete")
    time.sleep(0.1)
    assert len(hook.requests) == 2


def test_secret_rotation_signs_with_every_active_secret(
    started: list[SimServer | Receiver],
) -> None:
    hook = receiver(started)
    _, client = simulator(started, hook.url, secrets=("whsec_old", "whsec_new"))
    pay(client, confirm=False)
    [(_, headers, body)] = hook.wait(1)
    sig = headers["Stripe-Signature"]
    assert sig.count("v1=") == 2
    for secret in ("whsec_old", "whsec_new"):
        stripe.Webhook.construct_event(body.decode(), sig, secret)


def test_refund_events(started: list[SimServer | Receiver]) -> None:
    hook = receiver(started)
    server, client = simulator(started, hook.url)
    ok = pay(client)
    client.v1.refunds.create(params={"payment_intent": ok.id, "amount": 100})
    failing = client.v1.payment_intents.create(
        params={
            "amount": 500,
            "currency": "usd",
            "payment_method": "pm_card_refundFail",
            "confirm": True,
        }
    )
    client.v1.refunds.create(params={"payment_intent": failing.id})
    server.app.set_fault("hang", count=1, hang_seconds=0.2, method="POST", path="/v1/refunds")
    client.v1.refunds.create(params={"payment_intent": ok.id, "amount": 200})
    events = [json.loads(body) for *_, body in hook.wait(11)]
    assert [e["type"] for e in events] == [
        "payment_intent.created",
        "payment_intent.succeeded",
        "refund.created",
        "charge.refunded",
        "payment_intent.created",
        "payment_intent.succeeded",
        "refund.created",
        "refund.failed",
        "refund.created",
        "refund.updated",
        "charge.refunded",
    ]
    charge = events[3]["data"]["object"]
    assert (charge["object"], charge["amount_refunded"]) == ("charge", 100)
    failed = events[7]["data"]["object"]
    assert (failed["status"], failed["failure_reason"]) == ("failed", "declined")
    pending, updated = events[8], events[9]
    assert pending["data"]["object"]["status"] == "pending"
    assert updated["data"]["object"]["status"] == "succeeded"
    assert updated["data"]["previous_attributes"] == {"status": "pending"}
    assert events[10]["data"]["object"]["amount_refunded"] == 300


def test_admin_config_validates_and_never_shows_secrets(
    started: list[SimServer | Receiver],
) -> None:
    server, _ = simulator(started, "http://127.0.0.1:9/hook")
    shown = requests.get(f"{server.url}/_sim/webhooks", timeout=5).json()["endpoint"]
    assert shown["url"] == "http://127.0.0.1:9/hook" and SECRET not in json.dumps(shown)
    for bad in (
        {"url": "ftp://x"},
        {"url": "http://127.0.0.1:9", "max_attempts": 0},
        {"url": "http://127.0.0.1:9", "secret": ""},
        {"url": "http://127.0.0.1:9", "colour": "blue"},
    ):
        response = requests.post(f"{server.url}/_sim/webhooks", json=bad, timeout=5)
        assert response.status_code == 400, bad
    assert requests.get(f"{server.url}/_sim/webhooks", timeout=5).json()["endpoint"] == shown


def test_environment_and_keyword_configuration(started: list[SimServer | Receiver]) -> None:
    env = {"STRIPE_SIM_WEBHOOK_URL": "http://127.0.0.1:9/a", "STRIPE_SIM_WEBHOOK_SECRET": "whsec_e"}
    endpoint = make_app(environ=env).webhooks.endpoint
    assert endpoint is not None and (endpoint.url, endpoint.secrets) == (
        "http://127.0.0.1:9/a",
        ("whsec_e",),
    )
    default = make_app(environ={"STRIPE_SIM_WEBHOOK_URL": "http://127.0.0.1:9/a"}).webhooks
    assert default.endpoint is not None and default.endpoint.secrets == ("whsec_local_secret",)
    assert make_app(environ={}).webhooks.endpoint is None
    assert make_app(webhook_url="http://127.0.0.1:9/b", environ={}).webhooks.endpoint is not None
    handle = serve(port=0, app=StripeSimulator(), webhook_url="http://127.0.0.1:9/c")
    started.append(handle)
    assert handle.app.webhooks.endpoint is not None
    assert handle.app.webhooks.endpoint.url == "http://127.0.0.1:9/c"


def test_stop_stops_the_delivery_worker(started: list[SimServer | Receiver]) -> None:
    hook = receiver(started)
    server, client = simulator(started, hook.url)
    pay(client, confirm=False)
    hook.wait(1)
    assert server.app.webhooks.running
    server.stop()
    started.remove(server)
    assert not server.app.webhooks.running
