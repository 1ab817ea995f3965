"""The platform in-process: real handlers, moto DynamoDB + Step Functions (real ASL) behind
the local AWS emulator, and the Stripe simulator over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from local.aws import EmulatorHandle, start_emulator
from local.stripe_sim import SimServer, serve
from payments import services
from payments.channel import reset_channels
from payments.observability import metrics
from tests.support import api_event, payment_body


class Platform:
    def __init__(self, aws: EmulatorHandle, stripe: SimServer) -> None:
        self.aws = aws
        self.stripe = stripe

    def invoke(self, function: str, event: dict[str, Any]) -> Any:
        result, error = self.aws.runtime.invoke(function, event)
        assert error is None, error
        return result

    def call(
        self, function: str, event: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        result = self.invoke(function, event)
        return result["statusCode"], json.loads(result["body"]), result["headers"]

    def pay(self, **overrides: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = overrides.pop("headers", None)
        event = api_event(
            "POST", "/api/v1/payments", body=payment_body(**overrides), headers=headers
        )
        return self.call("CreatePaymentFunction", event)

    def refund(
        self, payment_no: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        path = f"/api/v1/payments/{payment_no}/refunds"
        event = api_event(
            "POST",
            "/api/v1/payments/{payment_no}/refunds",
            path=path,
            body=body,
            path_params={"payment_no": payment_no},
            headers=headers,
        )
        return self.call("RefundFunction", event)

    def get_payment(self, payment_no: str, **kw: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        event = api_event(
            "GET",
            "/api/v1/payments/{payment_no}",
            path=f"/api/v1/payments/{payment_no}",
            path_params={"payment_no": payment_no},
            **kw,
        )
        return self.call("CreatePaymentFunction", event)

    def get_order(self, order_no: str, **kw: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        event = api_event(
            "GET",
            "/api/v1/orders/{order_no}",
            path=f"/api/v1/orders/{order_no}",
            path_params={"order_no": order_no},
            **kw,
        )
        return self.call("CreatePaymentFunction", event)

    def list_payments(self, **query: str) -> dict[str, Any]:
        event = api_event("GET", "/api/v1/payments", path="/api/v1/payments")
        event["queryStringParameters"] = query
        event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
        status, body, _ = self.call("CreatePaymentFunction", event)
        assert status == 200, body
        return body

    def intents(self) -> list[dict[str, Any]]:
        data = requests.get(f"{self.stripe.url}/_sim/payment_intents", timeout=5).json()
        return list(data["data"] if isinstance(data, dict) else data)

    def fault(self, mode: str, **kw: Any) -> None:
        response = requests.post(
            f"{self.stripe.url}/_sim/fault", json={"mode": mode, **kw}, timeout=5
        )
        response.raise_for_status()

    def add_fault(self, mode: str, **kw: Any) -> None:
        """One more provider fault rule (first match wins), e.g. match=<merchant_order_no>."""
        response = requests.post(
            f"{self.stripe.url}/_sim/faults", json={"mode": mode, **kw}, timeout=5
        )
        response.raise_for_status()

    def sim_config(self, **config: Any) -> None:
        requests.post(f"{self.stripe.url}/_sim/config", json=config, timeout=5).raise_for_status()

    def item(self, pk: str, sk: str) -> dict[str, Any] | None:
        table = self.aws.env["PAYMENTS_TABLE"]
        got = self.aws.client("dynamodb").get_item(
            TableName=table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
        )
        return got.get("Item")

    def count_items(self) -> int:
        table = self.aws.env["PAYMENTS_TABLE"]
        return int(self.aws.client("dynamodb").scan(TableName=table, Select="COUNT")["Count"])


@contextmanager
def running_platform(**env: str) -> Iterator[Platform]:
    """Emulator + simulator for one test module; `env` adds function settings."""
    stripe = serve(port=0)
    aws = start_emulator(
        env_overrides={
            "STRIPE_API_BASE": stripe.url,
            "STRIPE_API_KEY": "sk_test_local",
            "STRIPE_MAX_RETRIES": "1",
            "STRIPE_READ_TIMEOUT_SECONDS": "1",
            "BREAKER_FAILURE_THRESHOLD": "50",
            **env,
        }
    )
    services.reset()
    reset_channels()
    try:
        yield Platform(aws, stripe)
    finally:
        aws.stop()
        stripe.stop()
        services.reset()
        reset_channels()


# moto state is process-global: every module gets its own emulator, as other tests start theirs.
@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    with running_platform() as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "platform" in request.fixturenames:
        p: Platform = request.getfixturevalue("platform")
        p.fault("none")
        reset_channels()


def metric(name: str, **labels: str) -> float:
    """Sum of a counter's series matching the given labels (cumulative since reset)."""
    family = next(m for m in metrics.registry() if m.name == name)
    total = 0.0
    for key, value in metrics.snapshot().get(name, {}).items():
        series = dict(zip(family.labels, key, strict=True))
        if all(series.get(k) == v for k, v in labels.items()):
            total += float(value)  # type: ignore[arg-type]
    return total
