"""Per-customer payment attempts in a sliding window, for the risk velocity rule."""

from __future__ import annotations

from payments.store.clients import dynamodb


class VelocityStore:
    def __init__(self, table: str) -> None:
        self.table = table

    def record_and_count(
        self, customer_id: str, payment_no: str, *, now_ms: int, window_seconds: int
    ) -> int:
        """Record this attempt and return the attempts within the window, this one included."""
        pk = f"VELOCITY#{customer_id}"
        dynamodb().put_item(
            TableName=self.table,
            Item={
                "pk": {"S": pk},
                "sk": {"S": f"{now_ms:015d}#{payment_no}"},
                "ttl": {"N": str(now_ms // 1000 + window_seconds * 2)},
            },
        )
        since = now_ms - window_seconds * 1000
        response = dynamodb().query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND sk > :since",
            ExpressionAttributeValues={":pk": {"S": pk}, ":since": {"S": f"{since:015d}"}},
            Select="COUNT",
            ConsistentRead=True,
        )
        return int(response["Count"])
