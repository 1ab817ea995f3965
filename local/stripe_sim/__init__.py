"""A Stripe-compatible simulator (a subset) for the local stack and tests.

Stripe's wire format for what the platform uses, held to what the official `stripe` SDK
expects (tests/unit/test_stripe_sim_sdk.py drives it with stripe-python): form-encoded
POSTs, Bearer (or Basic) auth with any `sk_test_` key or the configured one, Stripe's error
shapes, `Request-Id`, and Stripe's v1 idempotency semantics (see app.py).

Stripe routes
  POST /v1/payment_intents                 create (confirm=true charges at once)
  GET  /v1/payment_intents                 list, newest first: limit, starting_after, ending_before
  GET  /v1/payment_intents/search          query (subset, see search.py), limit, page; lags
                                           `search_delay_seconds` behind writes (Stripe: ~1 min)
  GET  /v1/payment_intents/{id}
  POST /v1/payment_intents/{id}/confirm    payment_method?
  POST /v1/payment_intents/{id}/cancel     cancellation_reason? (not once succeeded/processing)
  POST /v1/refunds                         payment_intent | charge, amount?, reason?, metadata[...]
  GET  /v1/refunds                         list: payment_intent, charge, paging
  GET  /v1/refunds/{id},  GET /v1/charges/{id}
  GET  /v1/events                          list: type (one * wildcard), types[], paging
  GET  /v1/events/{id}

Test payment methods: pm_card_visa, pm_card_mastercard succeed; pm_card_chargeDeclined
(card_declined/generic_decline) and pm_card_chargeDeclinedInsufficientFunds
(card_declined/insufficient_funds) decline with a 402 card_error; pm_card_refundFail charges
but its refunds fail (status "failed", failure_reason "declined", a refund.failed event).

Events: payment_intent.created/.processing/.succeeded/.payment_failed/.canceled,
refund.created/.updated/.failed, charge.refunded; signed webhooks to the configured endpoint
(STRIPE_SIM_WEBHOOK_URL + STRIPE_SIM_WEBHOOK_SECRET, default whsec_local_secret, or
POST /_sim/webhooks), from a background worker with bounded retries (webhooks.py).

Admin routes (not Stripe; JSON bodies whatever the Content-Type)
  GET/POST /_sim/fault           the first rule / one rule replacing all:
                                 {"mode", "count"?, "hang_seconds"?, "path"?, "match"?,
                                 "method"?}
  GET/POST/DELETE /_sim/faults   list / append (returns it with an id) / clear; first match wins
  GET/POST /_sim/config          {"search_delay_seconds": n}
  GET/POST/DELETE /_sim/webhooks {"url", "secret"? | "secrets"?, "delay_seconds"?,
                                 "max_attempts"?, "retry_seconds"?, "timeout_seconds"?}
  GET  /_sim/webhooks/deliveries every attempt: event_id, type, attempt, status, error
  POST /_sim/webhooks/resend     {"event_id"}
  GET  /_sim/payment_intents     {"data": [intent + "refunds": [...]]}, oldest first
  POST /_sim/reset               forget objects, events, keys, faults; keep configuration

Fault modes (faults.py): none, error, error_after, hang, conflict, rate_limit, drop,
unavailable. STRIPE_SIM_FAULT=<mode>[:count] and STRIPE_SIM_HANG_SECONDS set the first rule.
"""

from local.stripe_sim.app import StripeSimulator
from local.stripe_sim.errors import StripeError
from local.stripe_sim.faults import FAULT_MODES, Fault, fault_from_env
from local.stripe_sim.forms import parse_form
from local.stripe_sim.server import SimServer, main, make_app, serve
from local.stripe_sim.webhooks import WebhookEndpoint, sign

__all__ = [
    "FAULT_MODES",
    "Fault",
    "SimServer",
    "StripeError",
    "StripeSimulator",
    "WebhookEndpoint",
    "fault_from_env",
    "main",
    "make_app",
    "parse_form",
    "serve",
    "sign",
]
