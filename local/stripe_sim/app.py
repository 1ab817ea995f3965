"""The WSGI app: routing, auth, Stripe's idempotency layer, and fault injection.

Idempotency follows Stripe's v1 rules: a keyed POST whose endpoint starts executing saves
its first response (errors and 500s included) and same-key, same-params requests replay it
(`Idempotent-Replayed: true`); parameter-shape errors, 409s and 429s are not saved; a key
held by a request still executing answers 409 `idempotency_key_in_use`; other parameters
with the same key answer 400 `idempotency_error`. Keys are scoped per API key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from werkzeug.wrappers import Request, Response

from local.stripe_sim import admin, forms, ledger, reads
from local.stripe_sim.errors import Json, StripeError, api_error, invalid, unrecognized_url
from local.stripe_sim.faults import Fault, FaultRules, FaultTarget, modes_for, parse_fault
from local.stripe_sim.ledger import Call, FailedOp, KeyRecord, Ledger, Operation
from local.stripe_sim.objects import API_VERSION, new_id
from local.stripe_sim.webhooks import WebhookDispatcher, WebhookEndpoint

log = logging.getLogger(__name__)

DEFAULT_SEARCH_DELAY_SECONDS = 2.0
MAX_IDEMPOTENCY_KEY = 255
DROP_MARK = "X-Stripe-Sim-Drop"  # internal: never leaves the process

Writer = Callable[[Ledger, Call, Json, str | None], Operation]
Scope = tuple[str, str]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    writer: Writer | None = None
    reader: reads.Reader | None = None


def _routes() -> list[Route]:
    pi, obj = r"/v1/payment_intents", r"(?P<id>[A-Za-z0-9_]+)"
    return [
        Route("POST", re.compile(pi), writer=ledger.create_intent),
        Route("GET", re.compile(pi), reader=reads.list_intents),
        Route("GET", re.compile(f"{pi}/search"), reader=reads.search_intents),
        Route("GET", re.compile(f"{pi}/{obj}"), reader=reads.get_intent),
        Route("POST", re.compile(f"{pi}/{obj}/confirm"), writer=ledger.confirm_intent),
        Route("POST", re.compile(f"{pi}/{obj}/cancel"), writer=ledger.cancel_intent),
        Route("POST", re.compile("/v1/refunds"), writer=ledger.create_refund),
        Route("GET", re.compile("/v1/refunds"), reader=reads.list_refunds),
        Route("GET", re.compile(f"/v1/refunds/{obj}"), reader=reads.get_refund),
        Route("GET", re.compile(f"/v1/charges/{obj}"), reader=reads.get_charge),
        Route("GET", re.compile("/v1/events"), reader=reads.list_events),
        Route("GET", re.compile(f"/v1/events/{obj}"), reader=reads.get_event),
    ]


ROUTES = _routes()


@dataclass
class Exchange:
    """One HTTP request and the id its response (and any events) carry."""

    request: Request
    request_id: str
    api_key: str = ""

    def respond(
        self,
        status: int,
        body: Json | str,
        *,
        should_retry: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        text = body if isinstance(body, str) else json.dumps(body)
        response = Response(text, status=status, mimetype="application/json")
        response.headers["Request-Id"] = self.request_id
        response.headers["Stripe-Version"] = self.request.headers.get("Stripe-Version", API_VERSION)
        if should_retry is not None:
            response.headers["Stripe-Should-Retry"] = should_retry
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response


class StripeSimulator:
    """The WSGI app. State sits behind one lock; hangs and webhook delivery run outside it."""

    def __init__(
        self,
        api_key: str | None = None,
        fault: Fault | None = None,
        *,
        webhook: WebhookEndpoint | None = None,
        search_delay_seconds: float = DEFAULT_SEARCH_DELAY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._clock = clock
        self._faults = FaultRules(fault)
        self._search_delay = float(search_delay_seconds)
        self.webhooks = WebhookDispatcher(webhook)
        self.webhooks.on_settled(self._settled)
        self._ledger = Ledger(clock, self.webhooks.enqueue)

    # ---- WSGI ---------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        response = self.dispatch(Request(environ))
        if DROP_MARK in response.headers:
            _drop_connection(environ)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        exchange = Exchange(request, new_id("req"))
        try:
            if request.path.startswith("/_sim/"):
                return admin.handle(self, request)
            if not request.path.startswith("/v1/"):
                raise unrecognized_url(request.method, request.path)
            exchange.api_key = self._authenticate(request)
            route, object_id = _route(request)
            if route.writer is not None:
                return self._write(exchange, route.writer, object_id)
            assert route.reader is not None
            return self._read(exchange, route.reader, object_id)
        except StripeError as exc:
            return exchange.respond(exc.status, exc.body)

    def _authenticate(self, request: Request) -> str:
        header = request.headers.get("Authorization", "")
        key = ""
        if header.startswith("Bearer "):
            key = header.removeprefix("Bearer ").strip()
        elif header.startswith("Basic "):  # curl -u sk_test_...:
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                key = base64.b64decode(header[6:]).decode().partition(":")[0]
        if not key:
            raise StripeError(
                401,
                "invalid_request_error",
                "You did not provide an API key. Provide it as a Bearer token.",
            )
        if not (key.startswith("sk_test_") or (self.api_key and key == self.api_key)):
            # Like Stripe: only a hint of the key, never the key itself.
            raise StripeError(
                401, "invalid_request_error", f"Invalid API Key provided: {key[:8]}****"
            )
        return key

    # ---- writes: the idempotency layer -------------------------------------------------

    def _write(self, ex: Exchange, writer: Writer, object_id: str | None) -> Response:
        form = list(ex.request.form.items(multi=True))
        params = forms.parse_form(form)
        key = _idempotency_key(ex.request)
        scope = (ex.api_key, key) if key else None
        fingerprint = (ex.request.path, tuple(sorted(form)))
        with self._lock:
            state = self._ledger
            early = _replay(ex, state, scope, fingerprint) if scope else None
            call = Call(ex.request_id, key)
            op = _build(writer, state, call, params, object_id) if early is None else None
            fault = self._take_fault(
                ex, state, params, object_id, executes=early is None, scope=scope
            )
            if (refused := _refusal(ex, fault)) is not None:
                return refused
            if early is not None:
                return _marked(early, fault)
            assert op is not None
            if fault is not None and fault.mode == "conflict":
                return _key_in_use(ex, key or "")
            if scope is not None:
                state.keys[scope] = KeyRecord(fingerprint, ex.request_id)
            if fault is None or fault.mode != "hang":
                return self._finish(ex, state, scope, op, fault)
            if not _attempt(op.begin, True):
                return _settle(ex, state, scope, (500, api_error().body), fault)
        time.sleep(fault.hang_seconds)
        with self._lock:
            return self._finish(ex, state, scope, op, fault, begun=True)

    def _finish(
        self,
        ex: Exchange,
        state: Ledger,
        scope: Scope | None,
        op: Operation,
        fault: Fault | None,
        *,
        begun: bool = False,
    ) -> Response:
        mode = fault.mode if fault is not None else "none"
        status, body = 500, api_error().body
        if mode != "error":  # `error` fails once execution began, before any side effect
            try:
                if not begun:
                    op.begin(False)
                status, body = op.complete()
            except Exception:
                log.exception("simulator operation failed")
                status, body = 500, api_error().body
            if mode == "error_after":
                status, body = 500, api_error().body
        return _settle(ex, state, scope, (status, body), fault)

    def _take_fault(
        self,
        ex: Exchange,
        state: Ledger,
        params: Json,
        object_id: str | None,
        *,
        executes: bool,
        scope: Scope | None,
    ) -> Fault | None:
        values = [*_leaves(params), *([object_id] if object_id else [])]
        values += state.related_values(values)
        modes = modes_for(ex.request.method, scope is not None, executes)
        target = FaultTarget(ex.request.method, ex.request.path, tuple(values), frozenset(modes))
        return self._faults.take(target)

    # ---- reads ---------------------------------------------------------------------------

    def _read(self, ex: Exchange, reader: reads.Reader, object_id: str | None) -> Response:
        params = forms.parse_form(ex.request.args.items(multi=True))
        with self._lock:
            fault = self._take_fault(ex, self._ledger, params, object_id, executes=True, scope=None)
        if (refused := _refusal(ex, fault)) is not None:
            return refused
        if fault is not None and fault.mode in ("error", "error_after"):
            return ex.respond(500, api_error().body, should_retry="true")
        if fault is not None and fault.mode == "hang":
            time.sleep(fault.hang_seconds)
        with self._lock:
            body = reader(self._ledger, params, object_id, self._search_delay)
        return _marked(ex.respond(200, body), fault)

    # ---- admin API (used by local/stripe_sim/admin.py and by tests) ------------------

    def payment_intents(self) -> list[Json]:
        """Every intent with its refunds, oldest first (tests count intents per payment_no)."""
        with self._lock:
            state = self._ledger
            rows = [
                {**copy.deepcopy(intent), "refunds": copy.deepcopy(state.refunds_of[intent["id"]])}
                for intent in state.intents.oldest_first()
            ]
        return rows

    def set_fault(
        self,
        mode: str,
        count: int | None = None,
        hang_seconds: float | None = None,
        *,
        path: str | None = None,
        match: str | None = None,
        method: str | None = None,
    ) -> Fault:
        """One fault rule in place of all rules (mode "none" clears them)."""
        spec = {"mode": mode, "count": count, "hang_seconds": hang_seconds, "method": method}
        return self._faults.replace_all(parse_fault({**spec, "path": path, "match": match}))

    @property
    def faults(self) -> FaultRules:
        return self._faults

    @property
    def search_delay_seconds(self) -> float:
        with self._lock:
            return self._search_delay

    @search_delay_seconds.setter
    def search_delay_seconds(self, seconds: float) -> None:
        with self._lock:
            self._search_delay = float(seconds)

    def configure_webhooks(self, endpoint: WebhookEndpoint | None) -> None:
        self.webhooks.configure(endpoint)

    def resend(self, event_id: str) -> bool:
        """Deliver an event again (False: no such event); raises without an endpoint."""
        with self._lock:
            event = self._ledger.events.get(event_id)
            if event is None:
                return False
            if not self._ledger.deliver(event):
                raise invalid(
                    "No webhook endpoint is configured (POST /_sim/webhooks).",
                    code="webhook_endpoint_missing",
                )
            return True

    def reset(self) -> None:
        """Forget objects, events, keys, faults and queued deliveries; keep configuration."""
        with self._lock:
            self._ledger.active = False
            self._ledger = Ledger(self._clock, self.webhooks.enqueue)
            self._faults.clear()
        self.webhooks.clear()

    def close(self) -> None:
        """Stop the webhook worker (SimServer.stop calls this)."""
        self.webhooks.stop()

    def _settled(self, event_id: str) -> None:
        with self._lock:
            self._ledger.settled(event_id)


# ---- helpers ---------------------------------------------------------------------------


def _route(request: Request) -> tuple[Route, str | None]:
    for route in ROUTES:
        if route.method == request.method and (m := route.pattern.fullmatch(request.path)):
            return route, m.groupdict().get("id")
    raise unrecognized_url(request.method, request.path)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise invalid(
            f"Keys for idempotent requests can be no longer than {MAX_IDEMPOTENCY_KEY} characters.",
            code="idempotency_key_too_long",
        )
    return key or None


def _build(
    writer: Writer, state: Ledger, call: Call, params: Json, object_id: str | None
) -> Operation:
    """Validate a write. Shape errors propagate (not saved); errors the endpoint raises
    while executing (unknown objects, wrong states) become the saved result."""
    try:
        return writer(state, call, params, object_id)
    except StripeError as exc:
        if not exc.saved:
            raise
        return FailedOp(exc)


def _replay(
    ex: Exchange, state: Ledger, scope: Scope, fingerprint: tuple[str, Any]
) -> Response | None:
    """What an already-used key answers: the saved response, 409 or 400; None if unused."""
    record = state.keys.get(scope)
    if record is None:
        return None
    key = scope[1]
    if record.fingerprint[0] != fingerprint[0]:
        return _idempotency_error(
            ex,
            "Keys for idempotent requests can only be used for the same endpoint they were "
            f"first used for ('{record.fingerprint[0]}' vs '{fingerprint[0]}'). Try using a key "
            f"other than '{key}' if you meant to execute a different request.",
        )
    if record.fingerprint != fingerprint:
        return _idempotency_error(
            ex,
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a "
            "different request.",
        )
    if record.saved is None:
        return _key_in_use(ex, key)
    status, text, should_retry = record.saved
    headers = {
        "Idempotent-Replayed": "true",
        "Original-Request": record.request_id,
        "Idempotency-Key": key,
    }
    return ex.respond(status, text, should_retry=should_retry, headers=headers)


def _settle(
    ex: Exchange,
    state: Ledger,
    scope: Scope | None,
    result: tuple[int, Json],
    fault: Fault | None,
) -> Response:
    """Save the result under the key (retrying a saved 500 only replays it) and answer."""
    status, body = result
    should_retry = "false" if status >= 500 else None
    text = json.dumps(body)
    headers = {}
    if scope is not None:
        state.keys[scope].saved = (status, text, should_retry)
        headers["Idempotency-Key"] = scope[1]
    return _marked(ex.respond(status, text, should_retry=should_retry, headers=headers), fault)


def _refusal(ex: Exchange, fault: Fault | None) -> Response | None:
    """Faults that answer before anything runs: never saved, always worth a retry."""
    if fault is None:
        return None
    if fault.mode == "rate_limit":
        body = {
            "error": {
                "type": "invalid_request_error",
                "code": "rate_limit",
                "message": "Request rate limit exceeded (simulated). See "
                "https://stripe.com/docs/rate-limits.",
            }
        }
        return ex.respond(429, body, should_retry="true")
    if fault.mode == "unavailable":
        error = api_error("The service is temporarily unavailable (simulated).")
        return ex.respond(503, error.body, should_retry="true")
    return None


def _key_in_use(ex: Exchange, key: str) -> Response:
    body = {
        "error": {
            "type": "idempotency_error",
            "code": "idempotency_key_in_use",
            "message": "There is currently another in-progress request using this Idempotent "
            f"Key (that probably means you submitted twice, and the other request is still "
            f"going through): {key}. Please try again later.",
        }
    }
    return ex.respond(409, body, should_retry="true", headers={"Idempotency-Key": key})


def _idempotency_error(ex: Exchange, message: str) -> Response:
    return ex.respond(400, {"error": {"type": "idempotency_error", "message": message}})


def _marked(response: Response, fault: Fault | None) -> Response:
    if fault is not None and fault.mode == "drop":
        response.headers[DROP_MARK] = "1"
    return response


def _attempt(step: Callable[[bool], None], arg: bool) -> bool:
    try:
        step(arg)
    except Exception:
        log.exception("simulator operation failed")
        return False
    return True


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [str(value)]


def _drop_connection(environ: dict[str, Any]) -> NoReturn:
    """Close the client's connection without an HTTP response (a lost response).

    werkzeug's dev server hands the socket to the app as `werkzeug.socket`; shutting it down
    sends FIN, and raising a ConnectionError makes the server treat the exchange as a dropped
    connection instead of writing a 500.
    """
    sock = environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    raise ConnectionAbortedError("stripe simulator: connection dropped (fault mode drop)")
