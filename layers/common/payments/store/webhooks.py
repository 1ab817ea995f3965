"""Provider webhook events already handled (item WEBHOOK#{event_id}), for dedupe.

Stripe retries deliveries for up to three days; records are kept a little longer (TTL).
"""

from __future__ import annotations

import time

from botocore.exceptions import ClientError

from payments.store.clients import dynamodb

_KEEP_SECONDS = 4 * 86_400


def _key(event_id: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"WEBHOOK#{event_id}"}, "sk": {"S": "EVENT"}}


class WebhookEventStore:
    def __init__(self, table: str) -> None:
        self.table = table

    def seen(self, event_id: str) -> bool:
        item = dynamodb().get_item(TableName=self.table, Key=_key(event_id), ConsistentRead=True)
        return "Item" in item

    def remember(self, event_id: str, event_type: str) -> bool:
        """Record a handled event; False when it was recorded before (a duplicate)."""
        try:
            dynamodb().put_item(
                TableName=self.table,
                Item={
                    **_key(event_id),
                    "type": {"S": event_type},
                    "ttl": {"N": str(int(time.time()) + _KEEP_SECONDS)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return False
        return True
