"""Per-customer payment attempts in a sliding window, for the risk velocity rule."""

from __future__ import annotations

from payments.store.clients import dynamodb


class VelocityStore:
    def __init__(self, table: str) -> None:
        self.table = table

    def record_and_count(
        self, customer_id: str, payment_no: str, *, at_ms: int, window_seconds: int
    ) -> int:
        """Record this payment and return the payments within the window before `at_ms`,
        this one included.

        The item's key is (customer, the payment's own creation time, payment_no), so a
        retried risk step writes the same item again: each payment counts once.
        """
        pk = f"VELOCITY#{customer_id}"
        dynamodb().put_item(
            TableName=self.table,
            Item={
                "pk": {"S": pk},
                "sk": {"S": f"{at_ms:015d}#{payment_no}"},
                "ttl": {"N": str(at_ms // 1000 + window_seconds * 2)},
            },
        )
        since = at_ms - window_seconds * 1000
        response = dynamodb().query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :since AND :until",
            ExpressionAttributeValues={
                ":pk": {"S": pk},
                ":since": {"S": f"{since + 1:015d}"},
                ":until": {"S": f"{at_ms:015d}#~"},
            },
            Select="COUNT",
            ConsistentRead=True,
        )
        return int(response["Count"])
