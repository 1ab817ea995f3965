"""Merchant API keys (item APIKEY#{key_id}); the table is encrypted at rest with KMS."""

from __future__ import annotations

from payments.auth import ApiKey
from payments.store.clients import dynamodb


class ApiKeyStore:
    def __init__(self, table: str) -> None:
        self.table = table

    def lookup(self, key_id: str) -> ApiKey | None:
        if len(key_id) > 128:
            return None
        item = (
            dynamodb()
            .get_item(
                TableName=self.table,
                Key={"pk": {"S": f"APIKEY#{key_id}"}, "sk": {"S": "APIKEY"}},
            )
            .get("Item")
        )
        if not item:
            return None
        return ApiKey(
            key_id=key_id,
            merchant_id=item["merchant_id"]["S"],
            secret=item["secret"]["S"],
            active=item.get("status", {}).get("S", "active") == "active",
        )
