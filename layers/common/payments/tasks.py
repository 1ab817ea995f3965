"""The payment workflow's typed contract: what crosses the state machine.

The gateway builds a `WorkflowInput`; Step Functions passes each task a `*TaskInput` (the
ASL's `Parameters.Payload`); each task handler returns its result model (the ASL stores it
under `<ResultPath>.result`); the execution ends in a terminal Pass state that writes one
`WorkflowOutcome` to `$.outcome`, and the gateway reads the whole state as a
`WorkflowOutput`. A failed task never leaks a Python class name into the contract: the ASL
catches `States.ALL` on every Task and routes it to an outcome (`tests/unit/test_workflow_
contract.py` walks the ASL to prove every path ends in exactly one outcome).
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from payments.channel import CallOutcome, ChargeResult
from payments.records import CustomerInfo, OrderStatus, Record, RiskAssessment, RiskDecision

__all__ = [
    "CHOICE_VARIABLES",
    "CaughtError",
    "ChannelTaskInput",
    "OrderAction",
    "OrderRef",
    "OrderTaskInput",
    "Step",
    "TaskInput",
    "TaskPayment",
    "WorkflowInput",
    "WorkflowOutcome",
    "WorkflowOutput",
]


class Step(StrEnum):
    """Task state names; each task payload carries its own as `step`."""

    RISK_CHECK = "RiskCheck"
    CREATE_ORDER = "CreateOrder"
    CHANNEL_PAYMENT = "ChannelPayment"
    MARK_ORDER_PAID = "MarkOrderPaid"
    CANCEL_ORDER = "CancelOrder"


class WorkflowOutcome(StrEnum):
    """How an execution ended; the gateway maps each to exactly one payment transition."""

    SUCCEEDED = "succeeded"  # charged, order marked paid
    CHARGED = "charged"  # charged, but MarkOrderPaid failed: the gateway settles the order
    PENDING_REVIEW = "pending_review"
    RISK_REJECTED = "risk_rejected"
    RISK_CHECK_FAILED = "risk_check_failed"  # nothing reached the provider
    ORDER_FAILED = "order_failed"  # nothing reached the provider
    DECLINED = "declined"
    CHANNEL_UNAVAILABLE = "channel_unavailable"  # provably never reached the provider
    CHANNEL_REJECTED = "channel_rejected"  # the provider refused the request itself
    CHARGE_UNKNOWN = "charge_unknown"  # the provider may have charged: reconcile


class TaskPayment(Record, frozen=True, kw_only=True):
    """What the tasks need of a payment; never its description or metadata."""

    _unshown = frozenset({"payment_method"})

    payment_no: str
    merchant_id: str
    merchant_order_no: str
    amount: int
    currency: str
    channel: str
    payment_method: str
    customer: CustomerInfo | None = None
    created_at: str


class WorkflowInput(Record, frozen=True, kw_only=True):
    payment: TaskPayment
    trace_context: dict[str, str] = msgspec.field(default_factory=dict)


class TaskInput(Record, frozen=True, kw_only=True):
    step: Step
    payment: TaskPayment
    trace_context: dict[str, str] = msgspec.field(default_factory=dict)


class OrderAction(StrEnum):
    CREATE = "create"
    MARK_PAID = "mark_paid"
    CANCEL = "cancel"


class OrderRef(Record, frozen=True, kw_only=True):
    order_no: str
    status: OrderStatus


class OrderTaskInput(TaskInput, frozen=True, kw_only=True):
    action: OrderAction
    order: OrderRef | None = None


class ChannelTaskInput(TaskInput, frozen=True, kw_only=True):
    order: OrderRef


class CaughtError(Record, frozen=True, kw_only=True, rename={"error": "Error", "cause": "Cause"}):
    """What a Catch writes to its ResultPath (Step Functions' own shape)."""

    _unshown = frozenset({"cause"})  # it may quote a provider's or a task's message

    error: str
    cause: str | None = None


class _Risk(Record, frozen=True, kw_only=True):
    result: RiskAssessment


class _Order(Record, frozen=True, kw_only=True):
    result: OrderRef


class _Charge(Record, frozen=True, kw_only=True):
    result: ChargeResult


class WorkflowOutput(Record, frozen=True, kw_only=True):
    payment: TaskPayment
    outcome: WorkflowOutcome
    risk: _Risk | None = None
    order: _Order | None = None
    charge: _Charge | None = None
    order_update: _Order | None = None
    error: CaughtError | None = None

    @property
    def order_no(self) -> str | None:
        return self.order.result.order_no if self.order else None

    @property
    def charge_result(self) -> ChargeResult | None:
        return self.charge.result if self.charge else None


# The enum each Choice state may compare a variable against (checked against the ASL).
CHOICE_VARIABLES: dict[str, type[StrEnum]] = {
    "$.risk.result.decision": RiskDecision,
    "$.charge.result.outcome": CallOutcome,
}
