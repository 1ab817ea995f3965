"""Bounded Prometheus series: the `instance` label is a leased slot, not a per-environment id.

Each execution environment keeps cumulative counters, so its series need a label that no
other live environment writes at the same time. A random id per environment does that but
makes series grow with every environment ever started (Lambda churns them all day). Here an
environment leases the lowest free slot number of its function's pool (a conditional write
with an expiry), writes `instance="<slot>"`, renews the lease while it lives, and a later
environment reuses the slot once the lease has lapsed. Series then scale with the peak
number of concurrent environments per function.

Correctness when a slot changes hands: the new holder starts its series at 0 (the leading 0
sample), which Prometheus reads as a counter reset, so `rate()`/`increase()` stay exact. An
environment that lost its lease (frozen past the expiry) claims a slot again and counts from
what it last delivered (`epoch` changes; metrics rebases), so nothing is counted twice.

Storage: one item per slot in the payments table (single-table design), key
`pk="OBS#SLOTS#<function>"`, `sk="SLOT#<n>"`, attributes `owner`, `expires_at` and `ttl`
(DynamoDB TTL cleans up abandoned items). Only the export pipeline calls it, never the
response path.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

TTL_GRACE_S = 86_400  # DynamoDB deletes expired items up to days later; only a cleanup


class SlotLeases(Protocol):
    """Leases of numbered slots per function (the data-access interface)."""

    def claim(
        self, function: str, owner: str, slots: int, now: float, lease_s: float
    ) -> int | None:
        """Lease the lowest slot free at `now` (or already ours); None when all are taken."""

    def renew(self, function: str, slot: int, owner: str, now: float, lease_s: float) -> bool:
        """Extend our lease; False when it lapsed and someone else holds the slot."""

    def release(self, function: str, slot: int, owner: str) -> None:
        """Give the slot back (shutdown)."""


@dataclass
class _Lease:
    owner: str
    expires_at: float


class InMemorySlotLeases:
    """The same contract in memory (tests and the series-churn simulation)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, int], _Lease] = {}
        self._lock = threading.Lock()

    def claim(
        self, function: str, owner: str, slots: int, now: float, lease_s: float
    ) -> int | None:
        with self._lock:
            for slot in range(slots):
                lease = self.items.get((function, slot))
                if lease is None or lease.expires_at <= now or lease.owner == owner:
                    self.items[(function, slot)] = _Lease(owner, now + lease_s)
                    return slot
        return None

    def renew(self, function: str, slot: int, owner: str, now: float, lease_s: float) -> bool:
        with self._lock:
            lease = self.items.get((function, slot))
            if lease is None or lease.owner != owner:
                return False
            lease.expires_at = now + lease_s
            return True

    def release(self, function: str, slot: int, owner: str) -> None:
        with self._lock:
            lease = self.items.get((function, slot))
            if lease is not None and lease.owner == owner:
                del self.items[(function, slot)]


class DynamoDbSlotLeases:
    """Slot leases as items of the payments table, claimed with conditional writes."""

    def __init__(self, table: str, client: Any = None) -> None:
        self.table = table
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from payments.store import clients

            self._client = clients.dynamodb()
        return self._client

    @staticmethod
    def _key(function: str, slot: int) -> dict[str, Any]:
        return {"pk": {"S": f"OBS#SLOTS#{function}"}, "sk": {"S": f"SLOT#{slot:05d}"}}

    def _live(self, function: str, now: float) -> dict[int, str]:
        """Slots whose lease has not expired: slot -> owner (one Query of the pool)."""
        response = self.client.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"OBS#SLOTS#{function}"}},
            ConsistentRead=True,
        )
        live = {}
        for item in response.get("Items", []):
            if float(item["expires_at"]["N"]) > now:
                live[int(item["sk"]["S"].removeprefix("SLOT#"))] = item["owner"]["S"]
        return live

    def _put(self, function: str, slot: int, owner: str, now: float, lease_s: float) -> bool:
        from botocore.exceptions import ClientError

        expires = now + lease_s
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    **self._key(function, slot),
                    "owner": {"S": owner},
                    "expires_at": {"N": f"{expires:.3f}"},
                    "ttl": {"N": str(int(expires + TTL_GRACE_S))},
                },
                ConditionExpression="attribute_not_exists(pk) OR expires_at <= :now OR #o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}, ":me": {"S": owner}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def claim(
        self, function: str, owner: str, slots: int, now: float, lease_s: float
    ) -> int | None:
        for _attempt in range(3):  # lost races re-read the pool
            live = self._live(function, now)
            mine = [slot for slot, holder in live.items() if holder == owner]
            candidates = mine or [slot for slot in range(slots) if slot not in live]
            if not candidates:
                return None
            if self._put(function, candidates[0], owner, now, lease_s):
                return candidates[0]
        return None

    def renew(self, function: str, slot: int, owner: str, now: float, lease_s: float) -> bool:
        from botocore.exceptions import ClientError

        expires = now + lease_s
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._key(function, slot),
                UpdateExpression="SET expires_at = :e, #t = :t",
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner", "#t": "ttl"},
                ExpressionAttributeValues={
                    ":e": {"N": f"{expires:.3f}"},
                    ":t": {"N": str(int(expires + TTL_GRACE_S))},
                    ":me": {"S": owner},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def release(self, function: str, slot: int, owner: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_item(
                TableName=self.table,
                Key=self._key(function, slot),
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": owner}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise


class InstanceSlot:
    """This environment's `instance` label: a leased slot, renewed before it lapses."""

    def __init__(
        self,
        leases: SlotLeases,
        function: str,
        slots: int,
        lease_s: float,
        *,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.leases = leases
        self.function = function
        self.slots = slots
        self.lease_s = lease_s
        self.owner = owner or uuid.uuid4().hex
        self._clock = clock
        self.slot: int | None = None
        self.expires_at = 0.0
        self.epoch = 0  # bumped whenever the slot is (re)claimed: metrics rebase on it

    def current(self) -> tuple[str, int] | None:
        """(label, epoch) to write with now, or None when the pool is exhausted."""
        now = self._clock()
        if self.slot is not None and now < self.expires_at - self.lease_s / 2:
            return str(self.slot), self.epoch
        if (
            self.slot is not None
            and now < self.expires_at
            and self.leases.renew(self.function, self.slot, self.owner, now, self.lease_s)
        ):
            self.expires_at = now + self.lease_s
            return str(self.slot), self.epoch
        # Never held, lapsed (frozen past the expiry) or taken over: claim again.
        slot = self.leases.claim(self.function, self.owner, self.slots, now, self.lease_s)
        if slot is None:
            self.slot = None
            return None
        if slot != self.slot or now >= self.expires_at:
            self.epoch += 1
        self.slot, self.expires_at = slot, now + self.lease_s
        return str(slot), self.epoch

    def release(self) -> None:
        if self.slot is not None:
            self.leases.release(self.function, self.slot, self.owner)
            self.slot = None
