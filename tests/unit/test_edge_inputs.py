"""Request parsing and authentication on hostile input: a documented 4xx, never an exception.

SPEC §2: malformed JSON, duplicate keys, nesting deeper than 32 levels or wrong types → 400
invalid_request (every invalid field at once); a non-JSON Content-Type → 415; a body over
32 KiB → 413; a wrong or malformed signature, any bytes at all → 401 with one message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from payments.auth import ApiKey, authenticate, sign
from payments.errors import (
    InvalidAmount,
    InvalidRequest,
    PayloadTooLarge,
    PaymentError,
    Unauthorized,
    UnsupportedCurrency,
    UnsupportedMediaType,
)
from payments.jsonbody import MAX_BODY_BYTES, MAX_JSON_DEPTH, nesting_depth, parse_json_object
from payments.models import CreatePaymentRequest, RefundRequest, invalid_request_from

JSON = "application/json"


def _parse(body: bytes, content_type: str | None = JSON) -> dict[str, Any]:
    return parse_json_object(body, content_type)


def _nested(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


# --- body: size, media type, JSON ----------------------------------------------------------


def test_depth_limit_is_exactly_32_levels() -> None:
    assert _parse(_nested(MAX_JSON_DEPTH))["a"]
    with pytest.raises(InvalidRequest) as err:
        _parse(_nested(MAX_JSON_DEPTH + 1))
    assert err.value.details == [{"field": "body", "issue": "nested deeper than 32 levels"}]


def test_deep_nesting_is_refused_before_json_recursion_blows_up() -> None:
    # 5,000 levels made json.loads raise RecursionError (a 500) before the fix.
    for body in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 16000):
        with pytest.raises(InvalidRequest):
            _parse(body)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('{"a": "[[[[{{{{"}', 1),  # brackets inside strings do not count
        ('{"a": "\\"[[["}', 1),  # nor after an escaped quote
        ('{"a": "\\\\", "b": [[1]]}', 3),  # an escaped backslash ends the escape
        ("[[], [[]], []]", 3),
        ("1", 0),
    ],
)
def test_nesting_depth_ignores_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


@given(st.recursive(st.none() | st.integers() | st.text(), lambda c: st.lists(c, max_size=3)))
@settings(max_examples=200, deadline=None)
def test_nesting_depth_matches_the_parsed_structure(value: Any) -> None:
    def depth(v: Any) -> int:
        return 1 + max((depth(x) for x in v), default=0) if isinstance(v, list) else 0

    assert nesting_depth(json.dumps(value)) == depth(value)


def test_duplicate_keys_are_refused_at_any_level() -> None:
    with pytest.raises(InvalidRequest) as err:
        _parse(b'{"amount": 1, "amount": 600000}')
    assert err.value.details == [{"field": "amount", "issue": "duplicate key"}]
    with pytest.raises(InvalidRequest):
        _parse(b'{"customer": {"id": "a", "id": "b"}}')
    long_key = "k" * 5000
    with pytest.raises(InvalidRequest) as err:
        _parse(json.dumps({long_key: 1}).replace("}", f', "{long_key}": 2}}').encode())
    assert len(err.value.details[0]["field"]) <= 64  # never the whole input back


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'"x"', b"null", b"{}{}", b'{"a": NaN}', b'{"a": -Infinity}',
     b"\xff\xfe{}", b'{"a": "\xed\xa0\x80"}', b"\xef\xbb\xbf{}", b'{"a": ' + b"9" * 5000 + b"}"],
)  # fmt: skip
def test_malformed_bodies_are_invalid_request(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        _parse(body)
    assert err.value.details[0]["field"] == "body"


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
     "application/jsonx", "application/json; charset=latin-1", "application/problem+json"],
)  # fmt: skip
def test_other_media_types_are_415(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as err:
        _parse(b"{}", content_type)
    assert err.value.status == 415 and err.value.code == "unsupported_media_type"


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON", "application/json; charset=UTF-8"]
)
def test_json_media_types_are_accepted(content_type: str) -> None:
    assert _parse(b'{"a": 1}', content_type) == {"a": 1}


def test_size_is_checked_first_then_presence_then_media_type() -> None:
    with pytest.raises(PayloadTooLarge):
        _parse(b"x" * (MAX_BODY_BYTES + 1), "text/plain")
    assert _parse(b'{"a": "' + b"x" * (MAX_BODY_BYTES - 10) + b'"}')  # 32 KiB exactly is fine
    with pytest.raises(InvalidRequest):  # no body at all: required, whatever the type says
        _parse(b"", None)


@given(st.binary(max_size=256), st.sampled_from([JSON, "text/plain", None]))
@settings(deadline=None)
def test_any_bytes_give_an_object_or_a_documented_4xx(body: bytes, content_type: str) -> None:
    try:
        assert isinstance(_parse(body, content_type), dict)
    except PaymentError as err:
        assert err.status in (400, 413, 415)


# --- fields: all at once, one code by precedence ---------------------------------------------


def _error(body: Any, model: type = CreatePaymentRequest) -> PaymentError:
    with pytest.raises(ValidationError) as err:
        model.model_validate(body)
    errors = err.value.errors(include_input=False, include_url=False, include_context=False)
    return invalid_request_from([dict(e) for e in errors])


VALID = {"merchant_order_no": "o-1", "amount": 1, "currency": "USD", "payment_method": "pm_x"}


def test_every_invalid_field_is_reported_in_one_error() -> None:
    body = {**VALID, "amount": "1", "currency": "XXX", "channel": "paypal",
            "merchant_order_no": "has space", "metadata": {"": "x"}, "unknown": 1}  # fmt: skip
    err = _error(body)
    fields = {d["field"] for d in err.details}
    assert fields == {
        "amount",
        "currency",
        "channel",
        "merchant_order_no",
        'metadata.""',
        "unknown",
    }
    assert isinstance(err, InvalidAmount)  # amount first: the precedence below


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"amount": 0, "currency": "XXX", "channel": "paypal"}, "invalid_amount"),
        ({"currency": "XXX", "channel": "paypal", "payment_method": ""}, "unsupported_currency"),
        ({"channel": "paypal", "payment_method": ""}, "unsupported_channel"),
        ({"payment_method": "", "description": "d" * 501}, "invalid_request"),
        ({"currency": 840}, "invalid_request"),  # a number is a wrong type, not a currency
    ],
)
def test_code_precedence_amount_currency_channel_then_invalid_request(
    overrides: dict[str, Any], code: str
) -> None:
    err = _error({**VALID, **overrides})
    assert err.code == code and err.status == 400
    assert {d["field"] for d in err.details} == set(overrides)
    assert any(d["code"] == code for d in err.details)


def test_missing_amount_is_invalid_amount_even_with_other_errors() -> None:
    body = {k: v for k, v in VALID.items() if k != "amount"}
    err = _error({**body, "currency": "XXX"})
    assert err.code == "invalid_amount" and {d["field"] for d in err.details} == {
        "amount",
        "currency",
    }


@pytest.mark.parametrize(
    ("metadata", "ok"),
    [
        ({"": "x"}, False),
        ({"k" * 40: "v" * 500}, True),
        ({"k" * 41: "v"}, False),
        ({"k": "v" * 501}, False),
        ({f"k{i}": "v" for i in range(20)}, True),
        ({f"k{i}": "v" for i in range(21)}, False),
        ({"k": 1}, False),
    ],
)
def test_metadata_limits_are_stripes(metadata: dict[str, Any], ok: bool) -> None:
    body = {**VALID, "metadata": metadata}
    if ok:
        assert CreatePaymentRequest.model_validate(body).metadata == metadata
    else:
        assert _error(body).code == "invalid_request"


def test_errors_never_echo_values_or_internal_names() -> None:
    secret = "4242424242424242"
    err = _error({**VALID, "currency": secret, "customer": 5, "payment_method": secret * 20})
    text = json.dumps({"message": err.message, "details": err.details})
    assert secret not in text
    assert "Customer" not in text and "CreatePaymentRequest" not in text
    assert isinstance(err, UnsupportedCurrency)


@pytest.mark.parametrize("raw", [b"100.0", b"1e3", b"1E+2", b"-0", b"true", b'"100"'])
def test_amount_must_be_written_as_a_positive_integer(raw: bytes) -> None:
    # JSON Schema's `integer` would accept 100.0; the API does not (openapi.yaml says so).
    body = json.dumps(VALID).replace('"amount": 1', '"amount": ' + raw.decode()).encode()
    assert _error(_parse(body)).code == "invalid_amount"


@pytest.mark.parametrize("amount", [10**11 + 1, 10**40, 10**4000])
def test_refund_amount_above_any_payment_stays_positive_and_storable(amount: int) -> None:
    # Bounded so DynamoDB can compare it; the store then answers 422 amount_exceeded.
    assert RefundRequest.model_validate({"amount": amount}).amount == 10**11 + 1


@pytest.mark.parametrize("amount", [0, -1, 1.5, "1", True, None])
def test_refund_amount_not_a_positive_integer_is_400(amount: Any) -> None:
    assert _error({"amount": amount}, RefundRequest).code == "invalid_amount"


# --- authentication ------------------------------------------------------------------------

KEY = ApiKey(key_id="mk_test", merchant_id="merch_1", secret="s3cret")
NOW = 1_700_000_000


def _authenticate(**headers: str | None) -> str:
    values: dict[str, str | None] = {
        "key_id": "mk_test",
        "timestamp": str(NOW),
        "signature": sign("s3cret", str(NOW), "POST", "/api/v1/payments", b"{}"),
    }
    values.update(headers)
    return authenticate(
        **values,
        method="POST",
        path="/api/v1/payments",
        body=b"{}",
        lookup=lambda k: KEY if k == "mk_test" else None,
        tolerance_seconds=300,
        now=NOW,
    ).merchant_id


def test_the_well_formed_request_authenticates() -> None:
    assert _authenticate() == "merch_1"


@pytest.mark.parametrize(
    "headers",
    [
        {"signature": "é" * 64},  # hmac.compare_digest raised TypeError: a 500
        {"signature": "\x00" * 64},
        {"signature": "ab"},
        {"signature": ""},
        {"signature": None},
        {"key_id": "mk_té"},
        {"key_id": "k" * 129},
        {"key_id": ""},
        {"timestamp": "١٧٠٠٠٠٠٠٠٠"},  # int() accepts Arabic-Indic digits
        {"timestamp": " 1700000000"},
        {"timestamp": "1_700_000_000"},
        {"timestamp": "9" * 5000},
        {"timestamp": "-1"},
        {"timestamp": str(NOW - 301)},
        {"key_id": "mk_unknown"},
    ],
)
def test_any_bad_header_is_401_with_one_message(headers: dict[str, str | None]) -> None:
    with pytest.raises(Unauthorized) as err:
        _authenticate(**headers)
    assert err.value.message == Unauthorized.default_message


@given(st.text(max_size=80), st.text(max_size=20), st.text(max_size=80))
@settings(deadline=None)  # no timing claim here; a loaded CI machine must not flake it
def test_arbitrary_header_text_never_raises_anything_but_401(
    key_id: str, timestamp: str, signature: str
) -> None:
    with pytest.raises(Unauthorized):
        _authenticate(key_id=key_id, timestamp=timestamp, signature=signature)


# --- routing -------------------------------------------------------------------------------


def test_a_path_the_router_cannot_route_is_404_not_405() -> None:
    from local.events import api_event
    from payments.api.gateway import router

    # A raw `"` is no path parameter to the resolver: GET is allowed there, so not a 405.
    event = api_event("GET", "/api/v1/payments/{payment_no}", path='/api/v1/payments/a"b')
    result = router.resolve(event, None)
    assert result["statusCode"] == 404 and json.loads(result["body"])["error"]["code"] == (
        "not_found"
    )
    event = api_event("DELETE", "/api/v1/payments/{payment_no}", path="/api/v1/payments/x")
    result = router.resolve(event, None)
    assert result["statusCode"] == 405 and result["headers"]["Allow"] == "GET"


@pytest.mark.parametrize(
    ("value", "seen"),
    [("pay_0123abc", "pay_0123abc"), ("x" * 3000, ""), ("..", ""), ("pay_\u00e9", ""),
     ("%00", ""), ("a" * 128, "a" * 128), ("a" * 129, "")],
)  # fmt: skip
def test_path_identifiers_that_name_nothing_reach_the_route_as_empty(value: str, seen: str) -> None:
    # DynamoDB refuses keys over 2 KiB (moto does not): such a value must never be looked up.
    from local.events import api_event
    from payments.http import Router, respond

    router = Router()

    @router.route("GET", "/things/{thing_no}")
    def _echo(request: Any) -> Any:
        return respond(200, {"thing_no": request.path_params["thing_no"]})

    path = "/things/" + value
    result = router.resolve(api_event("GET", "/things/{thing_no}", path=path), None)
    assert json.loads(result["body"])["thing_no"] == seen


def test_details_are_bounded_but_the_code_sees_every_error() -> None:
    errors = [
        {"loc": ("metadata", f"k{i}"), "msg": "bad", "type": "string_type"} for i in range(80)
    ]
    err = invalid_request_from([*errors, {"loc": ("amount",), "msg": "x", "type": "missing"}])
    assert len(err.details) == 50 and err.code == "invalid_amount"
