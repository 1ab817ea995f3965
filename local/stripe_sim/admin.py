"""Admin routes under /_sim (not Stripe): faults, configuration, webhooks, state.

POST bodies are JSON whatever the Content-Type (`curl -d '{...}'` sends a form type).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from local.stripe_sim.errors import Json, StripeError
from local.stripe_sim.faults import parse_fault
from local.stripe_sim.webhooks import DEFAULT_SECRET, WebhookEndpoint

if TYPE_CHECKING:
    from local.stripe_sim.app import StripeSimulator

Handler = Callable[["StripeSimulator", Any], Json]
MAX_WEBHOOK_ATTEMPTS = 20


def handle(sim: StripeSimulator, request: Request) -> Response:
    handler = _ROUTES.get((request.method, request.path))
    if handler is None:
        raise _bad(f"Unknown admin route {request.method} {request.path}.", status=404)
    body = request.get_json(force=True, silent=True) if request.method == "POST" else None
    return Response(json.dumps(handler(sim, body)), status=200, mimetype="application/json")


def _get_fault(sim: StripeSimulator, _body: Any) -> Json:
    return sim.faults.first().as_json()


def _set_fault(sim: StripeSimulator, body: Any) -> Json:
    return sim.faults.replace_all(parse_fault(body)).as_json()


def _list_faults(sim: StripeSimulator, _body: Any) -> Json:
    return {"data": [rule.as_json() for rule in sim.faults.rules()]}


def _add_fault(sim: StripeSimulator, body: Any) -> Json:
    return sim.faults.add(parse_fault(body)).as_json()


def _clear_faults(sim: StripeSimulator, _body: Any) -> Json:
    sim.faults.clear()
    return {"data": []}


def _config(sim: StripeSimulator) -> Json:
    return {"search_delay_seconds": sim.search_delay_seconds}


def _get_config(sim: StripeSimulator, _body: Any) -> Json:
    return _config(sim)


def _set_config(sim: StripeSimulator, body: Any) -> Json:
    if not isinstance(body, dict) or set(body) - {"search_delay_seconds"}:
        raise _bad('body must be {"search_delay_seconds": <seconds>}.')
    if "search_delay_seconds" in body:
        sim.search_delay_seconds = _number(body, "search_delay_seconds", 0.0)
    return _config(sim)


def _get_webhooks(sim: StripeSimulator, _body: Any) -> Json:
    endpoint = sim.webhooks.endpoint
    return {"endpoint": endpoint.as_json() if endpoint else None}


def _set_webhooks(sim: StripeSimulator, body: Any) -> Json:
    endpoint = webhook_endpoint(body)
    sim.configure_webhooks(endpoint)
    return {"endpoint": endpoint.as_json()}


def _delete_webhooks(sim: StripeSimulator, _body: Any) -> Json:
    sim.configure_webhooks(None)
    return {"endpoint": None}


def _deliveries(sim: StripeSimulator, _body: Any) -> Json:
    return {"data": sim.webhooks.deliveries(), "pending": sim.webhooks.pending()}


def _resend(sim: StripeSimulator, body: Any) -> Json:
    event_id = body.get("event_id") if isinstance(body, dict) else None
    if not isinstance(event_id, str):
        raise _bad('body must be {"event_id": "evt_..."}.')
    if not sim.resend(event_id):
        raise _bad(f"No such event: '{event_id}'", status=404)
    return {"event_id": event_id, "queued": True}


def _payment_intents(sim: StripeSimulator, _body: Any) -> Json:
    return {"data": sim.payment_intents()}


def _reset(sim: StripeSimulator, _body: Any) -> Json:
    sim.reset()
    return {"reset": True}


_ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/_sim/fault"): _get_fault,
    ("POST", "/_sim/fault"): _set_fault,
    ("GET", "/_sim/faults"): _list_faults,
    ("POST", "/_sim/faults"): _add_fault,
    ("DELETE", "/_sim/faults"): _clear_faults,
    ("GET", "/_sim/config"): _get_config,
    ("POST", "/_sim/config"): _set_config,
    ("GET", "/_sim/webhooks"): _get_webhooks,
    ("POST", "/_sim/webhooks"): _set_webhooks,
    ("DELETE", "/_sim/webhooks"): _delete_webhooks,
    ("GET", "/_sim/webhooks/deliveries"): _deliveries,
    ("POST", "/_sim/webhooks/resend"): _resend,
    ("GET", "/_sim/payment_intents"): _payment_intents,
    ("POST", "/_sim/reset"): _reset,
}


def webhook_endpoint(body: Any) -> WebhookEndpoint:
    """{"url", "secret"? | "secrets"?, "delay_seconds"?, "max_attempts"?, "retry_seconds"?,
    "timeout_seconds"?} -> an endpoint (400 on anything else)."""
    fields = {"url", "secret", "secrets", "delay_seconds", "max_attempts", "retry_seconds"}
    if not isinstance(body, dict) or set(body) - (fields | {"timeout_seconds"}):
        raise _bad(f"webhook fields are: {', '.join(sorted(fields | {'timeout_seconds'}))}.")
    url = body.get("url")
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise _bad("url must be an http(s) URL.")
    secrets = body.get("secrets", [body.get("secret", DEFAULT_SECRET)])
    if (
        not isinstance(secrets, list)
        or not secrets
        or not all(isinstance(s, str) and s for s in secrets)
    ):
        raise _bad("secret must be a non-empty string (secrets: a non-empty list of them).")
    attempts = body.get("max_attempts", 5)
    if not isinstance(attempts, int) or not 1 <= attempts <= MAX_WEBHOOK_ATTEMPTS:
        raise _bad(f"max_attempts must be an integer from 1 to {MAX_WEBHOOK_ATTEMPTS}.")
    return WebhookEndpoint(
        url=str(url),
        secrets=tuple(secrets),
        delay_seconds=_number(body, "delay_seconds", 0.0),
        max_attempts=attempts,
        retry_seconds=_number(body, "retry_seconds", 1.0),
        timeout_seconds=_number(body, "timeout_seconds", 5.0, minimum=0.01),
    )


def _number(body: Json, name: str, default: float, minimum: float = 0.0) -> float:
    value = body.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < minimum:
        raise _bad(f"{name} must be a number >= {minimum:g}.")
    return float(value)


def _bad(message: str, status: int = 400) -> StripeError:
    return StripeError(status, "invalid_request_error", message)
