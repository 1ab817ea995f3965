"""Payments and refunds in the single table. Every state change is conditional or a
transaction, so the request path, the reconciler and webhooks can race safely.

Items (pk / sk):
  PAYMENT#{payment_no} / PAYMENT                      the payment
  PAYMENT#{payment_no} / REFUND#{refund_no}           its refunds
  MERCHANT#{merchant_id}#ORDERNO#{merchant_order_no} / GUARD   uniqueness of merchant_order_no
                                                      (released when its payment fails)
Indexes:
  by_merchant        merchant_id / created_key        the merchant's payments, newest first
  by_merchant_order  merchant_order_key / created_key the payments of one merchant_order_no
  unresolved         unresolved_kind / unresolved_since  sparse: payments still `processing`
                                                      and refunds still `pending`, oldest first

`refundable_amount` is the refund authority: a refund first reserves its amount with a
conditional decrement (never read-then-write), so concurrent refunds can never exceed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from botocore.exceptions import ClientError

from payments.errors import AmountExceeded, DuplicateOrder, InvalidStatus, NotFound
from payments.records import (
    REFUNDABLE_STATUSES,
    OrderStatus,
    Payment,
    PaymentStatus,
    Reconciliation,
    Refund,
    RefundStatus,
    dump,
    load,
)
from payments.store.clients import dynamodb, from_item, to_item

_PAYMENT_SK = "PAYMENT"
UNRESOLVED_INDEX = "unresolved"
Kind = Literal["PAYMENT", "REFUND"]


def _payment_key(payment_no: str) -> dict[str, Any]:
    return {"pk": {"S": f"PAYMENT#{payment_no}"}, "sk": {"S": _PAYMENT_SK}}


def _refund_key(payment_no: str, refund_no: str) -> dict[str, Any]:
    return {"pk": {"S": f"PAYMENT#{payment_no}"}, "sk": {"S": f"REFUND#{refund_no}"}}


def _guard_key(merchant_id: str, merchant_order_no: str) -> dict[str, Any]:
    pk = f"MERCHANT#{merchant_id}#ORDERNO#{merchant_order_no}"
    return {"pk": {"S": pk}, "sk": {"S": "GUARD"}}


def _order_key(order_no: str) -> dict[str, Any]:
    return {"pk": {"S": f"ORDER#{order_no}"}, "sk": {"S": "ORDER"}}


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _cancelled(err: ClientError) -> list[str]:
    """Per-item cancellation codes of a failed transaction ('' when unknown)."""
    if _error_code(err) != "TransactionCanceledException":
        raise err
    reasons = err.response.get("CancellationReasons") or []
    return [str(r.get("Code") or "") for r in reasons]


def _updates(values: dict[str, Any]) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """SET clauses for plain values, with placeholder names and serialised values."""
    names = {f"#u{i}": name for i, name in enumerate(values)}
    sets = [f"#u{i} = :u{i}" for i in range(len(values))]
    attr = to_item({f":u{i}": v for i, v in enumerate(values.values())})
    return sets, names, attr


@dataclass(frozen=True)
class OrderMove:
    """Move an existing order to `target`, from any of `sources` (target included)."""

    order_no: str
    target: OrderStatus
    sources: tuple[OrderStatus, ...]


@dataclass(frozen=True)
class Settlement:
    """The final transition of a processing payment, applied atomically."""

    status: PaymentStatus
    fields: dict[str, Any] = field(default_factory=dict)
    order: OrderMove | None = None
    release_guard: bool = False


class AlreadySettled(Exception):
    """The payment already left `processing` for another status."""

    def __init__(self, payment: Payment) -> None:
        super().__init__(f"payment already {payment.status.value}")
        self.payment = payment


class RefundExists(Exception):
    """A refund with this number exists already (a retried request)."""

    def __init__(self, refund: Refund) -> None:
        super().__init__(f"refund already {refund.status.value}")
        self.refund = refund


@dataclass(frozen=True)
class UnresolvedRef:
    kind: Kind
    payment_no: str
    refund_no: str | None
    since: str


class PaymentStore:
    def __init__(self, table: str) -> None:
        self.table = table

    # ---- payments ------------------------------------------------------------------------

    def create(self, payment: Payment) -> None:
        """Store a new processing payment; DuplicateOrder when the merchant_order_no is
        held by a payment that has not failed."""
        guard = {
            **_guard_key(payment.merchant_id, payment.merchant_order_no),
            "payment_no": {"S": payment.payment_no},
            "state": {"S": "active"},
        }
        item = to_item(
            {
                "pk": f"PAYMENT#{payment.payment_no}",
                "sk": _PAYMENT_SK,
                **{k: v for k, v in dump(payment).items() if k != "trace_id"},
                "merchant_order_key": f"{payment.merchant_id}#{payment.merchant_order_no}",
                "created_key": f"{payment.created_at}#{payment.payment_no}",
                "unresolved_kind": "PAYMENT",
                "unresolved_since": payment.created_at,
            }
        )
        try:
            dynamodb().transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": guard,
                            "ConditionExpression": "attribute_not_exists(pk) OR #state = :released",
                            "ExpressionAttributeNames": {"#state": "state"},
                            "ExpressionAttributeValues": {":released": {"S": "released"}},
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as err:
            _cancelled(err)
            raise DuplicateOrder() from None

    def holder_of(self, merchant_id: str, merchant_order_no: str) -> str | None:
        """The payment holding a merchant_order_no, if its guard is active."""
        item = (
            dynamodb()
            .get_item(
                TableName=self.table,
                Key=_guard_key(merchant_id, merchant_order_no),
                ConsistentRead=True,
            )
            .get("Item")
        )
        if not item or item.get("state", {}).get("S") != "active":
            return None
        return str(item["payment_no"]["S"])

    def get(self, payment_no: str, merchant_id: str | None = None) -> Payment:
        """The payment; NotFound when absent or owned by another merchant (never 403)."""
        if not payment_no or len(payment_no) > 128:
            raise NotFound("No such payment.")
        response = dynamodb().get_item(
            TableName=self.table, Key=_payment_key(payment_no), ConsistentRead=True
        )
        item = response.get("Item")
        if not item:
            raise NotFound("No such payment.")
        payment = load(Payment, from_item(item))
        if merchant_id is not None and payment.merchant_id != merchant_id:
            raise NotFound("No such payment.")
        return payment

    def list_payments(
        self,
        merchant_id: str,
        *,
        merchant_order_no: str | None = None,
        status: PaymentStatus | None = None,
        limit: int = 10,
        starting_after: str | None = None,
    ) -> tuple[list[Payment], bool]:
        """The merchant's payments, newest first, Stripe-style cursor; (page, has_more)."""
        query: dict[str, Any] = {"TableName": self.table, "ScanIndexForward": False}
        if merchant_order_no is not None:
            key = f"{merchant_id}#{merchant_order_no}"
            query |= {
                "IndexName": "by_merchant_order",
                "KeyConditionExpression": "merchant_order_key = :k",
                "ExpressionAttributeValues": {":k": {"S": key}},
            }
        else:
            query |= {
                "IndexName": "by_merchant",
                "KeyConditionExpression": "merchant_id = :k",
                "ExpressionAttributeValues": {":k": {"S": merchant_id}},
            }
        if status is not None:
            query["FilterExpression"] = "#status = :status"
            query["ExpressionAttributeNames"] = {"#status": "status"}
            query["ExpressionAttributeValues"][":status"] = {"S": status.value}
        if starting_after:
            cursor = self.get(starting_after, merchant_id)
            query["ExclusiveStartKey"] = self._index_key(cursor, by_order=merchant_order_no)
        found: list[Payment] = []
        while len(found) <= limit:
            query["Limit"] = limit + 1 - len(found)
            response = dynamodb().query(**query)
            found += [load(Payment, from_item(i)) for i in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                break
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return found[:limit], len(found) > limit

    @staticmethod
    def _index_key(payment: Payment, *, by_order: str | None) -> dict[str, Any]:
        key = {
            **_payment_key(payment.payment_no),
            "created_key": {"S": f"{payment.created_at}#{payment.payment_no}"},
        }
        if by_order is not None:
            key["merchant_order_key"] = {"S": f"{payment.merchant_id}#{by_order}"}
        else:
            key["merchant_id"] = {"S": payment.merchant_id}
        return key

    def settle(self, payment: Payment, settlement: Settlement, *, now: str) -> Payment:
        """Apply a processing payment's final transition (payment, order and guard at once).

        Idempotent: a payment already in the target status is returned as it is; one that
        left `processing` for another status raises AlreadySettled.
        """
        values = {**settlement.fields, "status": settlement.status.value, "updated_at": now}
        sets, names, attr = _updates(values)
        if settlement.status is PaymentStatus.SUCCEEDED:
            sets.append("refundable_amount = amount")
        names["#status"] = "status"
        attr[":processing"] = {"S": PaymentStatus.PROCESSING.value}
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": _payment_key(payment.payment_no),
                    "UpdateExpression": f"SET {', '.join(sets)} "
                    "REMOVE unresolved_kind, unresolved_since, unresolved_due",
                    "ConditionExpression": "#status = :processing",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": attr,
                }
            }
        ]
        if settlement.order is not None:
            items.append(self._order_update(settlement.order, now))
        if settlement.release_guard:
            items.append(self._guard_release(payment))
        try:
            dynamodb().transact_write_items(TransactItems=cast(Any, items))
        except ClientError as err:
            reasons = _cancelled(err)
            current = self.get(payment.payment_no)
            if current.status is settlement.status:
                return current
            if current.status is not PaymentStatus.PROCESSING:
                raise AlreadySettled(current) from None
            raise SettlementConflict(payment.payment_no, reasons) from None
        return self.get(payment.payment_no)

    def _order_update(self, move: OrderMove, now: str) -> dict[str, Any]:
        sources = {f":s{i}": {"S": s.value} for i, s in enumerate(move.sources)}
        return {
            "Update": {
                "TableName": self.table,
                "Key": _order_key(move.order_no),
                "UpdateExpression": "SET #status = :target, updated_at = :now",
                "ConditionExpression": "attribute_exists(pk) AND "
                f"#status IN ({', '.join(sources)})",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":target": {"S": move.target.value},
                    ":now": {"S": now},
                    **sources,
                },
            }
        }

    def _guard_release(self, payment: Payment) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table,
                "Key": _guard_key(payment.merchant_id, payment.merchant_order_no),
                "UpdateExpression": "SET #state = :released",
                "ConditionExpression": "payment_no = :p",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": {
                    ":released": {"S": "released"},
                    ":p": {"S": payment.payment_no},
                },
            }
        }

    def note(self, payment_no: str, fields: dict[str, Any], *, now: str) -> Payment:
        """Record what was learnt about a payment that stays processing."""
        sets, names, attr = _updates({**fields, "updated_at": now})
        names["#status"] = "status"
        attr[":processing"] = {"S": PaymentStatus.PROCESSING.value}
        try:
            response = dynamodb().update_item(
                TableName=self.table,
                Key=_payment_key(payment_no),
                UpdateExpression=f"SET {', '.join(sets)}",
                ConditionExpression="#status = :processing",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=attr,
                ReturnValues="ALL_NEW",
            )
        except ClientError as err:
            if _error_code(err) != "ConditionalCheckFailedException":
                raise
            return self.get(payment_no)
        return load(Payment, from_item(response["Attributes"]))

    def annotate(self, payment_no: str, fields: dict[str, Any]) -> None:
        """Add facts to a payment whatever its status (e.g. a late charge found)."""
        sets, names, attr = _updates(fields)
        dynamodb().update_item(
            TableName=self.table,
            Key=_payment_key(payment_no),
            UpdateExpression=f"SET {', '.join(sets)}",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=attr,
        )

    def record_reconciliation(self, ref: UnresolvedRef, state: Reconciliation, *, now: str) -> None:
        """Remember a reconciliation attempt on an item that is still unresolved."""
        pending = PaymentStatus.PROCESSING.value if ref.kind == "PAYMENT" else "pending"
        key = (
            _payment_key(ref.payment_no)
            if ref.refund_no is None
            else _refund_key(ref.payment_no, ref.refund_no)
        )
        try:
            dynamodb().update_item(
                TableName=self.table,
                Key=key,
                UpdateExpression="SET reconciliation = :r, updated_at = :now, "
                "unresolved_due = :due",
                ConditionExpression="#status = :pending",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":r": to_item({"r": dump(state)})["r"],
                    ":now": {"S": now},
                    ":pending": {"S": pending},
                    # Exhausted: never due again (left for an operator), still in the backlog.
                    ":due": {"S": "~" if state.exhausted else (state.next_at or now)},
                },
            )
        except ClientError as err:
            if _error_code(err) != "ConditionalCheckFailedException":
                raise  # resolved meanwhile: nothing to remember

    # ---- the unresolved index --------------------------------------------------------------

    def unresolved(self, kind: Kind, *, before: str, limit: int) -> list[UnresolvedRef]:
        """Unresolved payments or refunds older than `before`, oldest first (no scan)."""
        response = dynamodb().query(
            TableName=self.table,
            IndexName=UNRESOLVED_INDEX,
            KeyConditionExpression="unresolved_kind = :k AND unresolved_since < :before",
            ExpressionAttributeValues={":k": {"S": kind}, ":before": {"S": before}},
            ScanIndexForward=True,
            Limit=limit,
        )
        return [_unresolved_ref(kind, item) for item in response.get("Items", [])]

    def iter_unresolved(
        self, kind: Kind, *, before: str, now: str, page_size: int, max_pages: int = 20
    ) -> Iterator[UnresolvedRef]:
        """Unresolved items older than `before` that are due (`unresolved_due` <= now),
        oldest first, paging past those in backoff or left for an operator."""
        query: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": UNRESOLVED_INDEX,
            "KeyConditionExpression": "unresolved_kind = :k AND unresolved_since < :before",
            "ExpressionAttributeValues": {":k": {"S": kind}, ":before": {"S": before}},
            "ScanIndexForward": True,
            "Limit": page_size,
        }
        for _ in range(max_pages):
            response = dynamodb().query(**query)
            for item in response.get("Items", []):
                due = item.get("unresolved_due", {}).get("S")
                if due is None or due <= now:
                    yield _unresolved_ref(kind, item)
            if "LastEvaluatedKey" not in response:
                return
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def backlog(self, kind: Kind, *, before: str) -> tuple[int, str | None]:
        """(count, oldest `since`) of the unresolved items older than `before`."""
        query: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": UNRESOLVED_INDEX,
            "KeyConditionExpression": "unresolved_kind = :k AND unresolved_since < :before",
            "ExpressionAttributeValues": {":k": {"S": kind}, ":before": {"S": before}},
            "Select": "COUNT",
        }
        count = 0
        while True:
            response = dynamodb().query(**query)
            count += int(response.get("Count", 0))
            if "LastEvaluatedKey" not in response:
                break
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        oldest = self.unresolved(kind, before=before, limit=1)
        return count, oldest[0].since if oldest else None

    # ---- refunds ---------------------------------------------------------------------------

    def begin_refund(self, refund: Refund) -> Payment:
        """Reserve the amount and store the refund `pending`, atomically.

        InvalidStatus / AmountExceeded explain a refused reservation; RefundExists means
        this refund number was stored before (a retried request).
        """
        item = to_item(
            {
                "pk": f"PAYMENT#{refund.payment_no}",
                "sk": f"REFUND#{refund.refund_no}",
                **dump(refund),
                "unresolved_kind": "REFUND",
                "unresolved_since": refund.created_at,
            }
        )
        reserve = {
            "Update": {
                "TableName": self.table,
                "Key": _payment_key(refund.payment_no),
                "UpdateExpression": "SET refundable_amount = refundable_amount - :amount, "
                "updated_at = :now",
                "ConditionExpression": "#status IN (:succeeded, :partial) "
                "AND refundable_amount >= :amount",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":amount": {"N": str(refund.amount)},
                    ":now": {"S": refund.created_at},
                    ":succeeded": {"S": PaymentStatus.SUCCEEDED.value},
                    ":partial": {"S": PaymentStatus.PARTIALLY_REFUNDED.value},
                },
            }
        }
        put = {
            "Put": {
                "TableName": self.table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        try:
            dynamodb().transact_write_items(TransactItems=cast(Any, [put, reserve]))
        except ClientError as err:
            _cancelled(err)
            existing = self.get_refund(refund.payment_no, refund.refund_no)
            if existing is not None:
                raise RefundExists(existing) from None
            current = self.get(refund.payment_no)
            if current.status not in REFUNDABLE_STATUSES:
                raise InvalidStatus() from None
            raise AmountExceeded(
                f"amount exceeds the refundable amount of {current.refundable_amount}."
            ) from None
        return self.get(refund.payment_no)

    def get_refund(self, payment_no: str, refund_no: str) -> Refund | None:
        item = (
            dynamodb()
            .get_item(
                TableName=self.table, Key=_refund_key(payment_no, refund_no), ConsistentRead=True
            )
            .get("Item")
        )
        return load(Refund, from_item(item)) if item else None

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
        return [load(Refund, from_item(i)) for i in response.get("Items", [])]

    def complete_refund(
        self, refund: Refund, *, channel_reference: str | None, now: str
    ) -> tuple[Refund, Payment]:
        """A pending refund the provider made: record it and add it to the refunded amount,
        atomically. Idempotent; a refund that already failed raises AlreadyFinal."""
        refund_update = {
            "Update": {
                "TableName": self.table,
                "Key": _refund_key(refund.payment_no, refund.refund_no),
                "UpdateExpression": "SET #status = :succeeded, channel_reference = :ref, "
                "updated_at = :now REMOVE unresolved_kind, unresolved_since, unresolved_due",
                "ConditionExpression": "#status = :pending",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":succeeded": {"S": RefundStatus.SUCCEEDED.value},
                    ":pending": {"S": RefundStatus.PENDING.value},
                    ":ref": {"S": channel_reference} if channel_reference else {"NULL": True},
                    ":now": {"S": now},
                },
            }
        }
        payment_update = {
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
        }
        try:
            dynamodb().transact_write_items(
                TransactItems=cast(Any, [refund_update, payment_update])
            )
        except ClientError as err:
            _cancelled(err)
            current = self.get_refund(refund.payment_no, refund.refund_no)
            if current is None or current.status is not RefundStatus.SUCCEEDED:
                raise AlreadyFinal(current) from None
            return current, self.get(refund.payment_no)
        return self._refund_now(refund.payment_no, refund.refund_no), self._mark_refunded(
            refund.payment_no
        )

    def _refund_now(self, payment_no: str, refund_no: str) -> Refund:
        current = self.get_refund(payment_no, refund_no)
        assert current is not None
        return current

    def _mark_refunded(self, payment_no: str) -> Payment:
        # Reservations guarantee no increment can follow the one reaching the full amount,
        # so whoever sees refunded == amount may mark the payment refunded.
        try:
            response = dynamodb().update_item(
                TableName=self.table,
                Key=_payment_key(payment_no),
                UpdateExpression="SET #status = :refunded",
                ConditionExpression="refunded_amount = amount",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":refunded": {"S": PaymentStatus.REFUNDED.value}},
                ReturnValues="ALL_NEW",
            )
            return load(Payment, from_item(response["Attributes"]))
        except ClientError as err:
            if _error_code(err) != "ConditionalCheckFailedException":
                raise
        return self.get(payment_no)

    def fail_refund(
        self, refund: Refund, *, failure_code: str, now: str, forget: bool = False
    ) -> Refund | None:
        """A pending refund the provider did not make: release its reservation, atomically.

        `forget` deletes the refund instead (the request provably never reached the
        provider, so a retry with the same key must be able to start afresh). Idempotent;
        returns the refund as it now stands (None when forgotten).
        """
        if forget:
            refund_op: dict[str, Any] = {
                "Delete": {
                    "TableName": self.table,
                    "Key": _refund_key(refund.payment_no, refund.refund_no),
                    "ConditionExpression": "#status = :pending",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {":pending": {"S": RefundStatus.PENDING.value}},
                }
            }
        else:
            refund_op = {
                "Update": {
                    "TableName": self.table,
                    "Key": _refund_key(refund.payment_no, refund.refund_no),
                    "UpdateExpression": "SET #status = :failed, failure_code = :code, "
                    "updated_at = :now REMOVE unresolved_kind, unresolved_since, unresolved_due",
                    "ConditionExpression": "#status = :pending",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {
                        ":failed": {"S": RefundStatus.FAILED.value},
                        ":pending": {"S": RefundStatus.PENDING.value},
                        ":code": {"S": failure_code},
                        ":now": {"S": now},
                    },
                }
            }
        release = {
            "Update": {
                "TableName": self.table,
                "Key": _payment_key(refund.payment_no),
                "UpdateExpression": "SET refundable_amount = refundable_amount + :amount, "
                "updated_at = :now",
                "ExpressionAttributeValues": {
                    ":amount": {"N": str(refund.amount)},
                    ":now": {"S": now},
                },
            }
        }
        try:
            dynamodb().transact_write_items(TransactItems=cast(Any, [refund_op, release]))
        except ClientError as err:
            _cancelled(err)
            current = self.get_refund(refund.payment_no, refund.refund_no)
            if current is not None and current.status is RefundStatus.SUCCEEDED:
                raise AlreadyFinal(current) from None
            return current
        return None if forget else self.get_refund(refund.payment_no, refund.refund_no)


def _unresolved_ref(kind: Kind, item: dict[str, Any]) -> UnresolvedRef:
    sk = item["sk"]["S"]
    return UnresolvedRef(
        kind=kind,
        payment_no=item["pk"]["S"].removeprefix("PAYMENT#"),
        refund_no=sk.removeprefix("REFUND#") if sk.startswith("REFUND#") else None,
        since=item["unresolved_since"]["S"],
    )


class SettlementConflict(Exception):
    """A processing payment whose order or guard did not allow the transition (a bug or a
    concurrent operator change): nothing was written."""

    def __init__(self, payment_no: str, reasons: list[str]) -> None:
        super().__init__(f"settlement of {payment_no} refused: {reasons}")
        self.reasons = reasons


class AlreadyFinal(Exception):
    """The refund already reached the other final status."""

    def __init__(self, refund: Refund | None) -> None:
        super().__init__(f"refund is {refund.status.value if refund else 'gone'}")
        self.refund = refund
