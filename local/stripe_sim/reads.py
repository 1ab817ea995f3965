"""GET endpoints: retrieve, list (cursor pagination) and search, in Stripe's wire format."""

from __future__ import annotations

import copy
from collections.abc import Callable

from local.stripe_sim import forms
from local.stripe_sim.errors import Json, invalid, no_such
from local.stripe_sim.ledger import Ledger
from local.stripe_sim.search import compile_query
from local.stripe_sim.store import Collection, Predicate

DEFAULT_LIMIT, MAX_LIMIT = 10, 100
_PAGING = ("limit", "starting_after", "ending_before")

Reader = Callable[[Ledger, Json, str | None, float], Json]


def _limit(params: Json) -> int:
    raw = params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
        raise invalid(f"Invalid integer: {raw}", code="parameter_invalid_integer", param="limit")
    value = int(raw)
    if not 1 <= value <= MAX_LIMIT:
        raise invalid(
            f"This value must be between 1 and {MAX_LIMIT} (got {value}).",
            code="parameter_invalid_integer",
            param="limit",
        )
    return value


def _list(collection: Collection, params: Json, url: str, where: Predicate | None) -> Json:
    after = forms.string(params, "starting_after")
    before = forms.string(params, "ending_before")
    if after is not None and before is not None:
        raise invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            code="parameter_invalid",
        )
    data, has_more = collection.page(
        limit=_limit(params), starting_after=after, ending_before=before, where=where
    )
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def _get(collection: Collection, object_id: str | None) -> Json:
    obj = collection.get(str(object_id))
    if obj is None:
        raise no_such(collection.kind, str(object_id), param="id", status=404)
    return copy.deepcopy(obj)


def get_intent(ledger: Ledger, params: Json, object_id: str | None, _delay: float) -> Json:
    forms.reject_unknown(params, ())
    return _get(ledger.intents, object_id)


def list_intents(ledger: Ledger, params: Json, _id: str | None, _delay: float) -> Json:
    forms.reject_unknown(params, _PAGING)
    return _list(ledger.intents, params, "/v1/payment_intents", None)


def search_intents(ledger: Ledger, params: Json, _id: str | None, delay: float) -> Json:
    forms.reject_unknown(params, ("query", "limit", "page"))
    where = compile_query(forms.string(params, "query", required=True) or "")
    data, next_page = ledger.intents.search(
        where=where, limit=_limit(params), page=forms.string(params, "page"), delay_seconds=delay
    )
    return {
        "object": "search_result",
        "data": data,
        "has_more": next_page is not None,
        "next_page": next_page,
        "url": "/v1/payment_intents/search",
    }


def get_refund(ledger: Ledger, params: Json, object_id: str | None, _delay: float) -> Json:
    forms.reject_unknown(params, ())
    return _get(ledger.refunds, object_id)


def list_refunds(ledger: Ledger, params: Json, _id: str | None, _delay: float) -> Json:
    forms.reject_unknown(params, (*_PAGING, "payment_intent", "charge"))
    pi, ch = forms.string(params, "payment_intent"), forms.string(params, "charge")

    def where(refund: Json) -> bool:
        return (pi is None or refund["payment_intent"] == pi) and (
            ch is None or refund["charge"] == ch
        )

    return _list(ledger.refunds, params, "/v1/refunds", where)


def get_charge(ledger: Ledger, params: Json, object_id: str | None, _delay: float) -> Json:
    forms.reject_unknown(params, ())
    return _get(ledger.charges, object_id)


def get_event(ledger: Ledger, params: Json, object_id: str | None, _delay: float) -> Json:
    forms.reject_unknown(params, ())
    return _get(ledger.events, object_id)


def list_events(ledger: Ledger, params: Json, _id: str | None, _delay: float) -> Json:
    forms.reject_unknown(params, (*_PAGING, "type", "types"))
    one = forms.string(params, "type")
    many = forms.string_list(params, "types")
    if one is not None and many is not None:
        raise invalid("You may only specify one of type and types.", code="parameter_invalid")
    patterns = [one] if one is not None else many

    def where(event: Json) -> bool:
        return patterns is None or any(_type_matches(p, event["type"]) for p in patterns)

    return _list(ledger.events, params, "/v1/events", where)


def _type_matches(pattern: str, type_: str) -> bool:
    # Stripe's `type` filter takes one wildcard: payment_intent.* or *.succeeded.
    if "*" not in pattern:
        return pattern == type_
    head, _, tail = pattern.partition("*")
    return type_.startswith(head) and type_.endswith(tail)
