"""Payments and refunds in the single table. Every state change is conditional.

Items (pk / sk):
  PAYMENT#{payment_no} / PAYMENT                      the payment
  PAYMENT#{payment_no} / REFUND#{refund_no}           its refunds
  MERCHANT#{merchant_id}#ORDERNO#{merchant_order_no} / GUARD   uniqueness of merchant_order_no

`refundable_amount` is the refund authority: a refund first reserves its amount with a
conditional decrement (never read-then-write), so concurrent refunds can never exceed it.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from payments.errors import AmountExceeded, DuplicateOrder, InvalidStatus, NotFound
from payments.models import REFUNDABLE_STATUSES, Payment, PaymentStatus, Refund
from payments.store.clients import dynamodb, from_item, to_item

_PAYMENT_SK = "PAYMENT"


def _payment_key(payment_no: str) -> dict[str, Any]:
    return {"pk": {"S": f"PAYMENT#{payment_no}"}, "sk": {"S": _PAYMENT_SK}}


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


class PaymentStore:
    def __init__(self, table: str) -> None:
        self.table = table

    def create(self, payment: Payment) -> None:
        """Store a new payment; DuplicateOrder when the merchant_order_no is taken."""
        guard = {
            "pk": f"MERCHANT#{payment.merchant_id}#ORDERNO#{payment.merchant_order_no}",
            "sk": "GUARD",
            "payment_no": payment.payment_no,
        }
        item = {"pk": f"PAYMENT#{payment.payment_no}", "sk": _PAYMENT_SK}
        item.update(payment.model_dump(mode="json", exclude={"trace_id"}))
        try:
            dynamodb().transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": to_item(guard),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": to_item(item),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as err:
            if _error_code(err) == "TransactionCanceledException":
                raise DuplicateOrder() from None
            raise

    def get(self, payment_no: str, merchant_id: str | None = None) -> Payment:
        """The payment; NotFound when absent or owned by another merchant (never 403)."""
        response = dynamodb().get_item(
            TableName=self.table, Key=_payment_key(payment_no), ConsistentRead=True
        )
        item = response.get("Item")
        if not item:
            raise NotFound("No such payment.")
        payment = Payment.model_validate(from_item(item))
        if merchant_id is not None and payment.merchant_id != merchant_id:
            raise NotFound("No such payment.")
        return payment

    def refunds(self, payment_no: str) -> list[Refund]:
        response = dynamodb().query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={
                ":pk": {"S": f"PAYMENT#{payment_no}"},
                ":prefix": {"S": "REFUND#"},
            },
            ConsistentRead=True,
        )
        return [Refund.model_validate(from_item(i)) for i in response.get("Items", [])]

    def finalize(
        self,
        payment_no: str,
        status: PaymentStatus,
        *,
        now: str,
        fields: dict[str, Any],
    ) -> Payment:
        """Move a processing payment to its outcome (only from `processing`)."""
        values = {**fields, "status": status.value, "updated_at": now}
        if status is PaymentStatus.SUCCEEDED:
            values["refundable_amount"] = fields["amount"]
        values.pop("amount", None)
        names = {f"#f{i}": name for i, name in enumerate(values)}
        sets = ", ".join(f"#f{i} = :v{i}" for i in range(len(values)))
        attr_values = to_item({f":v{i}": v for i, v in enumerate(values.values())})
        attr_values[":processing"] = {"S": PaymentStatus.PROCESSING.value}
        names["#status"] = "status"
        response = dynamodb().update_item(
            TableName=self.table,
            Key=_payment_key(payment_no),
            UpdateExpression=f"SET {sets}",
            ConditionExpression="#status = :processing",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=attr_values,
            ReturnValues="ALL_NEW",
        )
        return Payment.model_validate(from_item(response["Attributes"]))

    def reserve_refund(self, payment_no: str, amount: int, *, now: str) -> Payment:
        """Take `amount` out of the refundable amount atomically, or explain why not."""
        try:
            response = dynamodb().update_item(
                TableName=self.table,
                Key=_payment_key(payment_no),
                UpdateExpression="SET refundable_amount = refundable_amount - :amount, "
                "updated_at = :now",
                ConditionExpression="#status IN (:succeeded, :partial) "
                "AND refundable_amount >= :amount",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":amount": {"N": str(amount)},
                    ":now": {"S": now},
                    ":succeeded": {"S": PaymentStatus.SUCCEEDED.value},
                    ":partial": {"S": PaymentStatus.PARTIALLY_REFUNDED.value},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as err:
            if _error_code(err) != "ConditionalCheckFailedException":
                raise
            current = self.get(payment_no)
            if current.status not in REFUNDABLE_STATUSES:
                raise InvalidStatus() from None
            raise AmountExceeded(
                f"amount exceeds the refundable amount of {current.refundable_amount}."
            ) from None
        return Payment.model_validate(from_item(response["Attributes"]))

    def release_refund(self, payment_no: str, amount: int, *, now: str) -> None:
        """Give back a reservation whose refund the provider did not make."""
        dynamodb().update_item(
            TableName=self.table,
            Key=_payment_key(payment_no),
            UpdateExpression="SET refundable_amount = refundable_amount + :amount, "
            "updated_at = :now",
            ExpressionAttributeValues={":amount": {"N": str(amount)}, ":now": {"S": now}},
        )

    def complete_refund(self, refund: Refund, *, now: str) -> Payment:
        """Record a refund the provider made and add it to the refunded amount, atomically."""
        item = {"pk": f"PAYMENT#{refund.payment_no}", "sk": f"REFUND#{refund.refund_no}"}
        item.update(refund.model_dump(mode="json"))
        dynamodb().transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": to_item(item),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": _payment_key(refund.payment_no),
                        "UpdateExpression": "SET refunded_amount = refunded_amount + :amount, "
                        "#status = :partial, updated_at = :now",
                        "ConditionExpression": "#status IN (:succeeded, :partial)",
                        "ExpressionAttributeNames": {"#status": "status"},
                        "ExpressionAttributeValues": {
                            ":amount": {"N": str(refund.amount)},
                            ":now": {"S": now},
                            ":succeeded": {"S": PaymentStatus.SUCCEEDED.value},
                            ":partial": {"S": PaymentStatus.PARTIALLY_REFUNDED.value},
                        },
                    }
                },
            ]
        )
        # Reservations guarantee no increment can follow the one reaching the full amount,
        # so whoever sees refunded == amount may mark the payment refunded.
        try:
            response = dynamodb().update_item(
                TableName=self.table,
                Key=_payment_key(refund.payment_no),
                UpdateExpression="SET #status = :refunded",
                ConditionExpression="refunded_amount = amount",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":refunded": {"S": PaymentStatus.REFUNDED.value}},
                ReturnValues="ALL_NEW",
            )
            return Payment.model_validate(from_item(response["Attributes"]))
        except ClientError as err:
            if _error_code(err) != "ConditionalCheckFailedException":
                raise
        return self.get(refund.payment_no)
