"""In-process stand-ins for the cold-start bench (`bench.coldstart`): no network, ever.

`stub_dynamodb(client)` answers every DynamoDB call of a real boto3 client in-process (an
empty table: no items, writes accepted), after botocore has built and signed the request and
before anything is sent, so the stores' own code and botocore's serialisation and parsing
run as on Lambda. `webhook_event()` is a Stripe webhook signed with the bench's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

WEBHOOK_SECRET = "whsec_bench"

_ANSWERS = {
    "Query": {"Items": [], "Count": 0, "ScannedCount": 0},
    "Scan": {"Items": [], "Count": 0, "ScannedCount": 0},
}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_kwargs: Any) -> Any:
        yield self._body


def stub_dynamodb(client: Any) -> Any:
    """Serve `client`'s calls from an empty table (returns the client)."""
    from botocore.awsrequest import AWSResponse
    from botocore.compat import HTTPHeaders

    def answer(request: Any, **_kwargs: Any) -> AWSResponse:
        target = request.headers.get("X-Amz-Target", b"")
        operation = (target.decode() if isinstance(target, bytes) else target).rpartition(".")[2]
        body = json.dumps(_ANSWERS.get(operation, {})).encode()
        headers = HTTPHeaders.from_dict(
            {"content-type": "application/x-amz-json-1.0", "x-amzn-requestid": "bench"}
        )
        return AWSResponse(request.url, 200, headers, _Raw(body))

    client.meta.events.register("before-send.dynamodb", answer)
    return client


def webhook_event(payment_no: str = "pay_0123456789abcdef01234567") -> dict[str, Any]:
    """POST /webhooks/stripe: `payment_intent.succeeded` for `payment_no`, signed now."""
    from local.events import api_event

    body = json.dumps(
        {
            "id": "evt_bench",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_bench", "metadata": {"payment_no": payment_no}}},
        }
    ).encode()
    timestamp = int(time.time())
    signature = hmac.new(
        WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return api_event(
        "POST",
        "/webhooks/stripe",
        body=body,
        headers={"stripe-signature": f"t={timestamp},v1={signature}"},
        signed=False,
    )
