"""A Stripe-compatible simulator (subset) for the local stack and tests.

Same wire format as api.stripe.com for what we use: form-encoded POSTs, Bearer auth,
Idempotency-Key replay, PaymentIntents (confirm=true), Refunds, Stripe error shapes.
Test payment methods: pm_card_visa / pm_card_mastercard succeed, pm_card_chargeDeclined and
pm_card_chargeDeclinedInsufficientFunds decline, pm_card_refundFail charges but refunds fail.

Admin routes (not Stripe) under /_sim: POST/GET /_sim/fault, GET /_sim/payment_intents,
POST /_sim/reset. The fault knob makes /v1 requests return 500s or hang; its initial value
comes from STRIPE_SIM_FAULT ("error", "hang", optionally ":count", e.g. "error:3") and
STRIPE_SIM_HANG_SECONDS.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import MultiDict
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

Json = dict[str, Any]

SUCCEED = frozenset({"pm_card_visa", "pm_card_mastercard", "pm_card_refundFail"})
DECLINES = {
    "pm_card_chargeDeclined": ("card_declined", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("card_declined", "insufficient_funds"),
}
REFUND_FAILS = frozenset({"pm_card_refundFail"})
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
FAULT_MODES = frozenset({"none", "error", "hang"})
_INTENT_PATH = re.compile(r"^/v1/payment_intents/([A-Za-z0-9_]+)$")


class StripeError(Exception):
    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: Json = {"error": {"type": type_, "message": message, **extra}}


@dataclass
class Fault:
    mode: str = "none"
    count: int | None = None  # requests still to affect; None = until changed
    hang_seconds: float = 30.0

    def as_json(self) -> Json:
        return {"mode": self.mode, "count": self.count, "hang_seconds": self.hang_seconds}


@dataclass
class _Stored:
    fingerprint: tuple[Any, ...]
    status: int
    body: Json


@dataclass
class _State:
    intents: dict[str, Json] = field(default_factory=dict)
    refunds: dict[str, list[Json]] = field(default_factory=dict)  # by payment intent id
    idempotency: dict[tuple[str, str], _Stored] = field(default_factory=dict)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def parse_form(form: MultiDict[str, str]) -> Json:
    """Stripe's bracket notation: metadata[k]=v -> {"metadata": {"k": v}}, a[]=x -> list."""
    out: Json = {}
    for key, value in form.items(multi=True):
        if key.endswith("[]"):
            out.setdefault(key[:-2], []).append(value)
        elif (m := re.fullmatch(r"([^\[\]]+)\[([^\[\]]+)\]", key)) is not None:
            out.setdefault(m.group(1), {})[m.group(2)] = value
        else:
            out[key] = value
    return out


def _positive_int(params: Json, name: str, *, required: bool = True) -> int | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Missing required param: {name}.",
                code="parameter_missing",
                param=name,
            )
        return None
    if not isinstance(raw, str) or not raw.isdigit() or int(raw) <= 0:
        raise StripeError(
            400,
            "invalid_request_error",
            f"Invalid positive integer: {name}.",
            code="parameter_invalid_integer",
            param=name,
        )
    return int(raw)


class StripeSimulator:
    """The WSGI app. All state sits behind one lock; hangs sleep outside it."""

    def __init__(self, api_key: str | None = None, fault: Fault | None = None) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._state = _State()
        self._fault = fault or Fault()

    # ---- WSGI -------------------------------------------------------------------------

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path, method = request.path, request.method
        try:
            if path.startswith("/_sim/"):
                return self._admin(request)
            if not path.startswith("/v1/"):
                raise StripeError(
                    404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."
                )
            self._check_auth(request)
            if (fault := self._take_fault()) is not None:
                if fault.mode == "error":
                    raise StripeError(500, "api_error", "An unknown error occurred (simulated).")
                time.sleep(fault.hang_seconds)
            return self._stripe(request)
        except StripeError as exc:
            return _json(exc.status, exc.body)

    def _check_auth(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
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

    def _take_fault(self) -> Fault | None:
        with self._lock:
            fault = self._fault
            if fault.mode == "none":
                return None
            taken = copy.copy(fault)
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._fault = Fault()
            return taken

    # ---- Stripe routes ----------------------------------------------------------------

    def _stripe(self, request: Request) -> Response:
        path, method = request.path, request.method
        if method == "GET" and (m := _INTENT_PATH.match(path)):
            with self._lock:
                intent = self._state.intents.get(m.group(1))
                if intent is None:
                    raise _missing("payment_intent", m.group(1), status=404)
                return _json(200, intent)
        handlers = {"/v1/payment_intents": self._create_intent, "/v1/refunds": self._refund}
        handler = handlers.get(path)
        if handler is None:
            raise StripeError(
                404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."
            )
        if method != "POST":
            raise StripeError(405, "invalid_request_error", f"Method {method} not allowed.")
        params = parse_form(request.form)
        key = request.headers.get("Idempotency-Key")
        auth = request.headers.get("Authorization", "")
        fingerprint = (path, tuple(sorted(request.form.items(multi=True))))
        with self._lock:
            if key:
                stored = self._state.idempotency.get((auth, key))
                if stored is not None:
                    if stored.fingerprint != fingerprint:
                        raise StripeError(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with "
                            "the same parameters they were first used with.",
                        )
                    response = _json(stored.status, stored.body)
                    response.headers["Idempotent-Replayed"] = "true"
                    response.headers["Idempotency-Key"] = key
                    return response
            # Validation errors are raised before anything is stored, as on Stripe.
            status, body = handler(params)
            if key:
                self._state.idempotency[(auth, key)] = _Stored(fingerprint, status, body)
        response = _json(status, body)
        if key:
            response.headers["Idempotency-Key"] = key
        return response

    def _create_intent(self, params: Json) -> tuple[int, Json]:
        amount = _positive_int(params, "amount")
        currency = params.get("currency")
        if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
            raise StripeError(
                400,
                "invalid_request_error",
                "Missing or invalid required param: currency.",
                code="parameter_missing" if not currency else "parameter_invalid",
                param="currency",
            )
        pm = params.get("payment_method")
        if not isinstance(pm, str) or not pm:
            raise StripeError(
                400,
                "invalid_request_error",
                "Missing param: payment_method.",
                code="parameter_missing",
                param="payment_method",
            )
        if pm not in SUCCEED and pm not in DECLINES:
            raise _missing("payment_method", pm)
        intent: Json = {
            "id": _new_id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": currency,
            "created": int(time.time()),
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "payment_method": pm,
            "payment_method_types": params.get("payment_method_types", ["card"]),
            "latest_charge": None,
            "last_payment_error": None,
            "status": "requires_confirmation",
        }
        self._state.intents[intent["id"]] = intent
        self._state.refunds[intent["id"]] = []
        if params.get("confirm") != "true":
            return 200, intent
        intent["latest_charge"] = _new_id("ch")
        if pm in DECLINES:
            code, decline_code = DECLINES[pm]
            error: Json = {
                "type": "card_error",
                "code": code,
                "decline_code": decline_code,
                "message": "Your card was declined.",
                "charge": intent["latest_charge"],
                "payment_method": {"id": pm, "object": "payment_method"},
            }
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = {k: v for k, v in error.items() if k != "payment_method"}
            return 402, {"error": {**error, "payment_intent": copy.deepcopy(intent)}}
        intent["status"] = "succeeded"
        intent["amount_received"] = amount
        return 200, intent

    def _refund(self, params: Json) -> tuple[int, Json]:
        intent = self._refund_target(params)
        if intent["status"] != "succeeded":
            raise StripeError(
                400,
                "invalid_request_error",
                f"PaymentIntent {intent['id']} has no successful charge to refund.",
                code="charge_not_refundable",
            )
        refunds = self._state.refunds[intent["id"]]
        refunded = sum(r["amount"] for r in refunds if r["status"] == "succeeded")
        remaining = int(intent["amount_received"]) - refunded
        if remaining <= 0:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Charge {intent['latest_charge']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = _positive_int(params, "amount", required=False) or remaining
        if amount > remaining:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Refund amount ({amount}) is greater than unrefunded amount "
                f"on charge ({remaining})",
                code="amount_too_large",
                param="amount",
            )
        reason = params.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise StripeError(
                400,
                "invalid_request_error",
                "Invalid reason.",
                code="parameter_invalid",
                param="reason",
            )
        fails = intent["payment_method"] in REFUND_FAILS
        refund: Json = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "currency": intent["currency"],
            "charge": intent["latest_charge"],
            "payment_intent": intent["id"],
            "created": int(time.time()),
            "metadata": params.get("metadata", {}),
            "reason": reason,
            "status": "failed" if fails else "succeeded",
        }
        if fails:
            refund["failure_reason"] = "declined"
        refunds.append(refund)
        return 200, refund

    def _refund_target(self, params: Json) -> Json:
        if (pi := params.get("payment_intent")) is not None:
            intent = self._state.intents.get(pi)
            if intent is None:
                raise _missing("payment_intent", pi)
            return intent
        if (ch := params.get("charge")) is not None:
            for intent in self._state.intents.values():
                if intent["latest_charge"] == ch:
                    return intent
            raise _missing("charge", ch)
        raise StripeError(
            400,
            "invalid_request_error",
            "One of charge or payment_intent is required.",
            code="parameter_missing",
            param="payment_intent",
        )

    # ---- admin (not Stripe) -----------------------------------------------------------

    def _admin(self, request: Request) -> Response:
        route = (request.method, request.path)
        if route == ("GET", "/_sim/fault"):
            with self._lock:
                return _json(200, self._fault.as_json())
        if route == ("POST", "/_sim/fault"):
            # JSON whatever the Content-Type: `curl -d '{"mode":"error"}'` sends a form type.
            fault = _parse_fault(request.get_json(force=True, silent=True))
            with self._lock:
                self._fault = fault
                return _json(200, fault.as_json())
        if route == ("GET", "/_sim/payment_intents"):
            return _json(200, {"data": self.payment_intents()})
        if route == ("POST", "/_sim/reset"):
            self.reset()
            return _json(200, {"reset": True})
        raise StripeError(404, "invalid_request_error", f"Unknown admin route {request.path}.")

    def payment_intents(self) -> list[Json]:
        """Every intent with its refunds, oldest first (tests count intents per payment_no)."""
        with self._lock:
            return [
                {**copy.deepcopy(i), "refunds": copy.deepcopy(self._state.refunds[i["id"]])}
                for i in self._state.intents.values()
            ]

    def set_fault(self, mode: str, count: int | None = None, hang_seconds: float = 30.0) -> None:
        fault = _parse_fault({"mode": mode, "count": count, "hang_seconds": hang_seconds})
        with self._lock:
            self._fault = fault

    def reset(self) -> None:
        with self._lock:
            self._state = _State()
            self._fault = Fault()


def _parse_fault(data: Any) -> Fault:
    if not isinstance(data, dict) or data.get("mode") not in FAULT_MODES:
        raise StripeError(400, "invalid_request_error", "mode must be none, error or hang.")
    count, hang = data.get("count"), data.get("hang_seconds", 30.0)
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise StripeError(400, "invalid_request_error", "count must be a positive integer.")
    if hang is None:
        hang = 30.0
    if not isinstance(hang, int | float) or isinstance(hang, bool) or hang < 0:
        raise StripeError(400, "invalid_request_error", "hang_seconds must be >= 0.")
    mode = str(data["mode"])
    return Fault(mode=mode, count=None if mode == "none" else count, hang_seconds=float(hang))


def fault_from_env(environ: dict[str, str] | None = None) -> Fault:
    """STRIPE_SIM_FAULT=error | hang | none, optionally with ':count'."""
    env = os.environ if environ is None else environ
    raw = env.get("STRIPE_SIM_FAULT", "none").strip() or "none"
    mode, _, count = raw.partition(":")
    return _parse_fault(
        {
            "mode": mode.strip().lower(),
            "count": int(count) if count.strip() else None,
            "hang_seconds": float(env.get("STRIPE_SIM_HANG_SECONDS", "30")),
        }
    )


def _missing(param: str, value: str, status: int = 400) -> StripeError:
    return StripeError(
        status,
        "invalid_request_error",
        f"No such {param}: '{value}'",
        code="resource_missing",
        param=param,
    )


def _json(status: int, body: Json) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Request-Id"] = _new_id("req")
    response.headers["Stripe-Version"] = "2024-06-20"
    return response


def make_app(api_key: str | None = None) -> StripeSimulator:
    """A fresh simulator; the fault knob starts from STRIPE_SIM_FAULT."""
    return StripeSimulator(api_key=api_key, fault=fault_from_env())


class SimServer:
    """A simulator served over real HTTP on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: StripeSimulator, server: BaseWSGIServer) -> None:
        self.app = app
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    host: str = "127.0.0.1", port: int = 12111, *, app: StripeSimulator | None = None
) -> SimServer:
    """Start serving (port 0 = ephemeral) and return the handle. Loopback only."""
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError("the simulator only listens on the loopback interface")
    sim = app or make_app(os.environ.get("STRIPE_API_KEY"))
    return SimServer(sim, make_server("127.0.0.1", port, sim, threaded=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stripe-compatible simulator (subset)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STRIPE_SIM_PORT", "12111")))
    args = parser.parse_args(argv)
    handle = serve(port=args.port)
    print(f"stripe simulator listening on {handle.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        handle.stop()


if __name__ == "__main__":
    main()
