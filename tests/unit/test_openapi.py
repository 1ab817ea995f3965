"""openapi.yaml: a valid OpenAPI 3.1 document, the same routes as template.yaml, the same
rules as the code, and what the local stack serves as GET /openapi.json."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from werkzeug.test import Client

from local.api import ApiGateway
from local.openapi import DOCUMENT, OPENAPI_PATH, load_document, served_document
from local.template import load_template
from payments import errors, models, money
from payments.jsonbody import MAX_BODY_BYTES, MAX_JSON_DEPTH
from tests.e2e.test_fuzz import NOT_YET_ON_MAIN

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_document()


def _operations(doc: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def _resolve(section: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    resolved: dict[str, Any] = section[node["$ref"].rsplit("/", 1)[-1]]
    return resolved


def _template_routes(template: Path = ROOT / "template.yaml") -> set[tuple[str, str]]:
    return {(r.method, r.path) for r in load_template(template).routes if r.path != "$default"}


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert DOCUMENT == ROOT / "openapi.yaml"
    assert doc["openapi"].startswith("3.1.")
    validate(doc)


def _route_mismatches(
    documented: set[tuple[str, str]],
    deployed: set[tuple[str, str]],
    pending: frozenset[tuple[str, str]] = NOT_YET_ON_MAIN,
) -> list[str]:
    problems = [f"{m} {p}: in template.yaml, not in openapi.yaml" for m, p in deployed - documented]
    problems += [f"{m} {p}: in openapi.yaml, not in template.yaml" for m, p in
                 documented - deployed - pending]  # fmt: skip
    problems += [f"{m} {p}: in NOT_YET_ON_MAIN, not documented" for m, p in pending - documented]
    problems += [
        f"{m} {p}: in template.yaml now: delete it from NOT_YET_ON_MAIN "
        "(tests/e2e/test_fuzz.py) so the fuzzer covers it"
        for m, p in pending & deployed
    ]
    return sorted(problems)


def test_every_template_route_is_documented_and_every_documented_route_deployed(
    doc: dict[str, Any],
) -> None:
    documented = {(m, p) for m, p, _ in _operations(doc)}
    assert _route_mismatches(documented, _template_routes()) == []


def test_a_route_in_one_and_not_the_other_is_a_mismatch(
    tmp_path: Path, doc: dict[str, Any]
) -> None:
    documented = {(m, p) for m, p, _ in _operations(doc)}
    template = tmp_path / "template.yaml"
    text = (ROOT / "template.yaml").read_text(encoding="utf-8")
    template.write_text(text.replace("Path: /health", "Path: /healthz"), encoding="utf-8")
    assert _route_mismatches(documented, _template_routes(template)) == [
        "GET /health: in openapi.yaml, not in template.yaml",
        "GET /healthz: in template.yaml, not in openapi.yaml",
    ]


def test_every_operation_is_traced_signed_and_answers_json(doc: dict[str, Any]) -> None:
    unsigned = {("GET", "/health"), ("POST", "/webhooks/stripe")}
    components = doc["components"]
    for method, path, op in _operations(doc):
        assert op.get("operationId"), (method, path)
        signed = op.get("security", doc["security"]) != []
        assert signed == ((method, path) not in unsigned), (method, path)
        if signed:
            assert "401" in op["responses"], (method, path)
        for status, response in op["responses"].items():
            resolved = _resolve(components["responses"], response)
            assert "X-Trace-ID" in resolved["headers"], (method, path, status)
            assert "application/json" in resolved["content"], (method, path, status)
            assert not status.startswith("5") or status == "503", (method, path, status)
        if "requestBody" in op:
            assert list(op["requestBody"]["content"]) == ["application/json"]
            # Merchant bodies have the 32 KiB and media-type rules; a provider event is
            # verified on its raw bytes whatever they are (any failure is its 400).
            if signed:
                assert {"413", "415"} <= set(op["responses"]), (method, path)


def test_503_channel_unavailable_carries_retry_after(doc: dict[str, Any]) -> None:
    response = doc["components"]["responses"]["ChannelUnavailable"]
    header = response["headers"]["Retry-After"]["$ref"].rsplit("/", 1)[-1]
    assert doc["components"]["headers"][header]["required"] is True
    assert response["content"]["application/json"]["x-error-codes"] == ["channel_unavailable"]
    for path in ("/api/v1/payments", "/api/v1/payments/{payment_no}/refunds"):
        assert doc["paths"][path]["post"]["responses"]["503"]["$ref"].endswith(
            "/ChannelUnavailable"
        )


def test_the_hmac_scheme_is_documented(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    headers = {s["name"] for s in schemes.values() if s["type"] == "apiKey" and s["in"] == "header"}
    assert headers == {"X-API-Key", "X-Timestamp", "X-Signature"}
    assert doc["security"] == [{name: [] for name in schemes}]
    text = doc["info"]["description"] + schemes["merchantSignature"]["description"]
    assert "{timestamp}.{METHOD}.{path}.{raw_body}" in text and "300 s" in text


def _codes(doc: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.update(node.get("x-error-codes", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


def test_every_client_error_code_of_the_code_is_documented(doc: dict[str, Any]) -> None:
    classes = [errors.PaymentError, *_subclasses(errors.PaymentError)]
    client_codes = {c.code for c in classes if 400 <= c.status < 500}
    documented = _codes(doc) | {"method_not_allowed", "risk_rejected", "channel_declined"}
    assert client_codes <= documented, client_codes - documented
    assert _codes(doc) <= {c.code for c in classes}, "a documented code the code never uses"


def _subclasses(cls: type) -> list[type]:
    return [s for c in cls.__subclasses__() for s in (c, *_subclasses(c))]


def test_rules_match_the_code(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["Currency"]["enum"] == sorted(money.CURRENCY_EXPONENTS)
    assert schemas["Amount"]["minimum"] == money.MIN_AMOUNT
    assert schemas["Amount"]["maximum"] == money.MAX_AMOUNT
    create = schemas["CreatePaymentRequest"]["properties"]
    assert create["channel"]["enum"] == sorted(models.SUPPORTED_CHANNELS)
    assert schemas["PaymentStatus"]["enum"] == [s.value for s in models.PaymentStatus]
    assert schemas["Order"]["properties"]["status"]["enum"] == [s.value for s in models.OrderStatus]
    assert create["metadata"]["maxProperties"] == 20
    assert create["metadata"]["propertyNames"] == {"minLength": 1, "maxLength": 40}
    assert create["metadata"]["additionalProperties"] == {"type": "string", "maxLength": 500}
    email = schemas["Customer"]["properties"]["email"]["pattern"]
    assert email == models._EMAIL
    text = doc["info"]["description"]
    assert f"{MAX_BODY_BYTES // 1024} KiB" in text and f"deeper than {MAX_JSON_DEPTH}" in text
    required = set(schemas["CreatePaymentRequest"]["required"])
    assert required == {
        name for name, f in models.CreatePaymentRequest.model_fields.items() if f.is_required()
    }
    assert set(create) == set(models.CreatePaymentRequest.model_fields)
    refund = schemas["RefundRequest"]["properties"]
    assert set(refund) == set(models.RefundRequest.model_fields)


VALID = {"merchant_order_no": "o-1", "amount": 1, "currency": "USD", "payment_method": "p"}


@pytest.mark.parametrize(
    ("overrides", "valid"),
    [
        ({}, True),
        ({"customer": {"email": "a@b", "country": "US"}, "metadata": {"k": "v"}}, True),
        ({"description": None, "customer": None, "metadata": None}, True),
        ({"merchant_order_no": "o 1"}, False),
        ({"amount": 0}, False),
        ({"amount": 10**11 + 1}, False),
        ({"currency": "usd"}, False),
        ({"channel": "paypal"}, False),
        ({"metadata": {"": "x"}}, False),
        ({"metadata": {"k" * 41: "x"}}, False),
        ({"customer": {"email": "a b@c"}}, False),
        ({"customer": {"country": "usa"}}, False),
        ({"extra": 1}, False),
    ],
)
def test_document_and_model_agree_on_sample_bodies(
    doc: dict[str, Any], overrides: dict[str, Any], valid: bool
) -> None:
    body = {**VALID, **overrides}
    schemas = json.loads(json.dumps(doc["components"]["schemas"]).replace(
        "#/components/schemas/", "#/$defs/"
    ))  # fmt: skip
    schema = {**schemas["CreatePaymentRequest"], "$defs": schemas}
    assert Draft202012Validator(schema).is_valid(body) is valid
    try:
        models.CreatePaymentRequest.model_validate(body)
    except ValueError:
        assert not valid
    else:
        assert valid


# --- served by the local stack ---------------------------------------------------------------


class _NoRuntime:
    def invoke(self, *_args: Any) -> Any:
        raise AssertionError("GET /openapi.json must not reach a function")


def test_the_local_stack_serves_the_document_at_openapi_json(doc: dict[str, Any]) -> None:
    gateway = ApiGateway(load_template(ROOT / "template.yaml"), _NoRuntime())  # type: ignore[arg-type]
    response = Client(gateway).get(OPENAPI_PATH, headers={"Host": "127.0.0.1:4321"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    served = json.loads(response.get_data())
    assert served["servers"][0]["url"] == "http://127.0.0.1:4321"
    assert {k: v for k, v in served.items() if k != "servers"} == {
        k: v for k, v in doc.items() if k != "servers"
    }
    assert served["servers"][1:] == doc["servers"]


def test_served_document_does_not_repeat_its_own_origin(doc: dict[str, Any]) -> None:
    origin = doc["servers"][0]["url"]
    servers = served_document(origin)["servers"]
    assert [s["url"] for s in servers].count(origin) == 1
