"""Circuit-breaker openings shared by every execution environment (item BREAKER#{name}).

`opened_until` is authoritative (wall-clock epoch seconds); the `ttl` attribute only lets
DynamoDB clean up items long after they stopped mattering.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from payments.store.clients import dynamodb

_KEEP_SECONDS = 86_400


def _key(name: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"BREAKER#{name}"}, "sk": {"S": "STATE"}}


def _conditional_failed(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class BreakerStore:
    def __init__(self, table: str) -> None:
        self.table = table

    def opened_until(self, name: str) -> float | None:
        item = dynamodb().get_item(TableName=self.table, Key=_key(name)).get("Item")
        if not item or "opened_until" not in item:
            return None
        return float(item["opened_until"]["N"])

    def open(self, name: str, until: float) -> None:
        """Publish an opening; a later one already stored wins (never shorten an opening)."""
        try:
            dynamodb().put_item(
                TableName=self.table,
                Item={
                    **_key(name),
                    "opened_until": {"N": f"{until:.3f}"},
                    "ttl": {"N": str(int(until) + _KEEP_SECONDS)},
                },
                ConditionExpression="attribute_not_exists(pk) OR opened_until < :until",
                ExpressionAttributeValues={":until": {"N": f"{until:.3f}"}},
            )
        except ClientError as err:
            if not _conditional_failed(err):
                raise

    def close(self, name: str, now: float) -> None:
        """Clear an expired opening; one re-published meanwhile (until > now) survives."""
        try:
            dynamodb().delete_item(
                TableName=self.table,
                Key=_key(name),
                ConditionExpression="opened_until <= :now",
                ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}},
            )
        except ClientError as err:
            if not _conditional_failed(err):
                raise
