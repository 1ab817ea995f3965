"""Orders: created -> paid | cancelled, paid -> refunded. Transitions are conditional and
idempotent (a retried task finding the order already in the target state succeeds)."""

from __future__ import annotations

from botocore.exceptions import ClientError

from payments.errors import InvalidStatus, NotFound
from payments.records import Order, OrderStatus, dump, load
from payments.store.clients import dynamodb, from_item, to_item


def _key(order_no: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"ORDER#{order_no}"}, "sk": {"S": "ORDER"}}


class OrderStore:
    def __init__(self, table: str) -> None:
        self.table = table

    def create(self, order: Order) -> Order:
        item = {"pk": f"ORDER#{order.order_no}", "sk": "ORDER", **dump(order)}
        try:
            dynamodb().put_item(
                TableName=self.table,
                Item=to_item(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            existing = self.get(order.order_no)
            if existing.payment_no != order.payment_no:
                raise
            return existing
        return order

    def find(self, order_no: str) -> Order | None:
        item = dynamodb().get_item(TableName=self.table, Key=_key(order_no), ConsistentRead=True)
        return load(Order, from_item(item["Item"])) if "Item" in item else None

    def get(self, order_no: str, merchant_id: str | None = None) -> Order:
        order = self.find(order_no) if 0 < len(order_no) <= 128 else None
        if order is None:
            raise NotFound("No such order.")
        if merchant_id is not None and order.merchant_id != merchant_id:
            raise NotFound("No such order.")
        return order

    def transition(
        self, order_no: str, *, source: OrderStatus, target: OrderStatus, now: str
    ) -> Order:
        try:
            response = dynamodb().update_item(
                TableName=self.table,
                Key=_key(order_no),
                UpdateExpression="SET #status = :target, updated_at = :now",
                ConditionExpression="#status = :source",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":target": {"S": target.value},
                    ":source": {"S": source.value},
                    ":now": {"S": now},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            current = self.get(order_no)
            if current.status is target:
                return current
            raise InvalidStatus(f"Order is {current.status.value}, not {source.value}.") from None
        return load(Order, from_item(response["Attributes"]))
