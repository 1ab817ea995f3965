"""The data layer on in-memory fakes, and the functions loaded as the Lambda runtime loads them.

`install()` replaces the DynamoDB stores and the Step Functions workflow by in-memory fakes
(bounded, so a long run does not grow because of the fakes themselves); the workflow either
runs the real task handlers in-process, as the state machine would (`inline`), or answers
with a canned success (`canned`, one invocation = one flush). The channel is faked unless
`real_channel` (then the real Stripe client talks to a simulator on loopback).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

from bench.common import DEMO_KEY, DEMO_MERCHANT, DEMO_SECRET, ROOT
from payments.records import replace

Handler = Callable[[Any, Any], Any]
_counter = itertools.count(1)
CAPACITY = 64  # items kept per fake table (full long before invocation 100)


class Context:
    """The Lambda context attributes the handlers and `instrument` read."""

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.memory_limit_in_mb = 256
        self.function_version = "$LATEST"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "bench"
        self._deadline = time.monotonic() + 30

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(function: str, *, unwrap: bool = False) -> Handler:
    """functions/<function>/app.py as a fresh module (one execution environment)."""
    path = ROOT / "functions" / function / "app.py"
    name = f"bench_fn_{function}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    handler: Handler = module.handler
    return getattr(handler, "__wrapped__", handler) if unwrap else handler


class _Bounded(OrderedDict[str, Any]):
    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if len(self) > CAPACITY:
            self.popitem(last=False)


class FakeKeys:
    def lookup(self, key_id: str) -> Any:
        from payments.auth import ApiKey

        if key_id != DEMO_KEY:
            return None
        return ApiKey(key_id=key_id, merchant_id=DEMO_MERCHANT, secret=DEMO_SECRET, active=True)


class FakePayments:
    def __init__(self) -> None:
        self.items: _Bounded = _Bounded()
        self.guards: _Bounded = _Bounded()

    def create(self, payment: Any) -> None:
        from payments.errors import DuplicateOrder

        guard = f"{payment.merchant_id}#{payment.merchant_order_no}"
        if guard in self.guards:
            raise DuplicateOrder()
        self.guards[guard] = payment.payment_no
        self.items[payment.payment_no] = payment

    def get(self, payment_no: str, merchant_id: str | None = None) -> Any:
        from payments.errors import NotFound

        payment = self.items.get(payment_no)
        if payment is None or (merchant_id is not None and payment.merchant_id != merchant_id):
            raise NotFound("No such payment.")
        return payment

    def refunds(self, payment_no: str) -> list[Any]:
        return []

    def holder_of(self, merchant_id: str, merchant_order_no: str) -> str | None:
        return self.guards.get(f"{merchant_id}#{merchant_order_no}")

    def settle(self, payment: Any, settlement: Any, *, now: str) -> Any:
        from payments.models import PaymentStatus

        values = dict(settlement.fields)
        current = self.items[payment.payment_no]
        if settlement.status is PaymentStatus.SUCCEEDED:
            values["refundable_amount"] = current.amount
        updated = _updated(current, {**values, "status": settlement.status, "updated_at": now})
        self.items[payment.payment_no] = updated
        return updated

    def note(self, payment_no: str, fields: dict[str, Any], *, now: str) -> Any:
        current = self.items[payment_no]
        updated = _updated(current, {**fields, "updated_at": now})
        self.items[payment_no] = updated
        return updated

    def get_refund(self, payment_no: str, refund_no: str) -> Any:
        return None

    def begin_refund(self, refund: Any) -> Any:
        from payments.errors import AmountExceeded

        current = self.items[refund.payment_no]
        if current.refundable_amount < refund.amount:
            raise AmountExceeded("amount exceeds the refundable amount.")
        updated = replace(current, refundable_amount=current.refundable_amount - refund.amount)
        self.items[refund.payment_no] = updated
        return updated

    def fail_refund(self, refund: Any, *, failure_code: str, now: str, forget: bool = False) -> Any:
        current = self.items[refund.payment_no]
        self.items[refund.payment_no] = replace(
            current, refundable_amount=current.refundable_amount + refund.amount
        )
        return None if forget else _updated(refund, {"status": "failed"})

    def complete_refund(self, refund: Any, *, channel_reference: str | None, now: str) -> Any:
        from payments.models import PaymentStatus, RefundStatus

        current = self.items[refund.payment_no]
        refunded = current.refunded_amount + refund.amount
        status = (
            PaymentStatus.REFUNDED
            if refunded == current.amount
            else PaymentStatus.PARTIALLY_REFUNDED
        )
        updated = replace(current, refunded_amount=refunded, status=status, updated_at=now)
        self.items[refund.payment_no] = updated
        made = replace(refund, status=RefundStatus.SUCCEEDED, channel_reference=channel_reference)
        return made, updated


def _updated(record: Any, values: dict[str, Any]) -> Any:
    """`record` with `values` (JSON-shaped, as a store's update writes them) merged in."""
    from payments.records import dump, load

    return load(type(record), {**dump(record), **values})


class FakeOrders:
    def __init__(self) -> None:
        self.items: _Bounded = _Bounded()

    def create(self, order: Any) -> Any:
        self.items.setdefault(order.order_no, order)
        return self.items[order.order_no]

    def find(self, order_no: str) -> Any:
        return self.items.get(order_no)

    def get(self, order_no: str, merchant_id: str | None = None) -> Any:
        from payments.errors import NotFound

        order = self.items.get(order_no)
        if order is None or (merchant_id is not None and order.merchant_id != merchant_id):
            raise NotFound("No such order.")
        return order

    def transition(self, order_no: str, *, source: Any, target: Any, now: str) -> Any:
        from payments.errors import InvalidStatus

        order = self.get(order_no)
        if order.status == target:
            return order
        if order.status != source:
            raise InvalidStatus()
        updated = replace(order, status=target, updated_at=now)
        self.items[order_no] = updated
        return updated


class FakeVelocity:
    def __init__(self) -> None:
        self.counts: _Bounded = _Bounded()

    def record_and_count(
        self, customer_id: str, payment_no: str, *, at_ms: int, window_seconds: int
    ) -> int:
        count = int(self.counts.get(customer_id, 0)) + 1
        self.counts[customer_id] = count
        return count


class FakeBreaker:
    """Always closed: the fakes never fail."""

    def remaining_seconds(self) -> int:
        return 0


class FakeChannel:
    def charge(self, **kwargs: Any) -> Any:
        from payments.channel import CallOutcome, ChargeResult

        return ChargeResult(
            outcome=CallOutcome.SUCCEEDED,
            channel_reference=f"pi_{uuid.uuid4().hex[:24]}",
            decline_code=None,
        )

    def refund(self, **kwargs: Any) -> Any:
        from payments.channel import CallOutcome, RefundResult

        return RefundResult(
            outcome=CallOutcome.SUCCEEDED,
            channel_reference=f"re_{uuid.uuid4().hex[:24]}",
            decline_code=None,
        )


class FakeWorkflow:
    """The state machine's happy path: RiskCheck → CreateOrder → ChannelPayment → MarkOrderPaid."""

    def __init__(self, mode: str, unwrap: bool) -> None:
        self.mode = mode
        if mode == "inline":
            self.risk = load_handler("risk_check", unwrap=unwrap)
            self.order = load_handler("order", unwrap=unwrap)
            self.channel = load_handler("channel", unwrap=unwrap)

    @staticmethod
    def _call(handler: Handler, name: str, payload: dict[str, Any]) -> Any:
        # Through JSON both ways, as Step Functions and Lambda do.
        return json.loads(json.dumps(handler(json.loads(json.dumps(payload)), Context(name))))

    def run(self, execution_input: Any, *, name: str) -> Any:
        from payments.records import dump, load
        from payments.tasks import WorkflowOutput

        return load(WorkflowOutput, self._run(dump(execution_input)))

    def _run(self, execution_input: dict[str, Any]) -> dict[str, Any]:
        payment = execution_input["payment"]
        base = {"trace_context": execution_input.get("trace_context", {}), "payment": payment}
        if self.mode != "inline":
            order_no = "ord_" + payment["payment_no"].removeprefix("pay_")
            return {
                **base,
                "risk": {"result": {"decision": "approve", "score": 0, "reasons": []}},
                "order": {"result": {"order_no": order_no, "status": "created"}},
                "charge": {
                    "result": {
                        "outcome": "succeeded",
                        "channel_reference": "pi_canned",
                        "decline_code": None,
                    }
                },
                "outcome": "succeeded",
            }
        state: dict[str, Any] = dict(base)
        state["risk"] = {
            "result": self._call(self.risk, "RiskCheck", {"step": "RiskCheck", **base})
        }
        decision = state["risk"]["result"]["decision"]
        if decision != "approve":
            return {
                **state,
                "outcome": "risk_rejected" if decision == "reject" else "pending_review",
            }
        state["order"] = {
            "result": self._call(
                self.order, "Order", {"step": "CreateOrder", **base, "action": "create"}
            )
        }
        charge = self._call(
            self.channel,
            "Channel",
            {"step": "ChannelPayment", **base, "order": state["order"]["result"]},
        )
        state["charge"] = {"result": charge}
        action = "mark_paid" if charge["outcome"] == "succeeded" else "cancel"
        step = "MarkOrderPaid" if action == "mark_paid" else "CancelOrder"
        state["order_update"] = {
            "result": self._call(
                self.order,
                "Order",
                {"step": step, **base, "action": action, "order": state["order"]["result"]},
            )
        }
        state["outcome"] = "succeeded" if action == "mark_paid" else "declined"
        return state


class Fakes:
    def __init__(self, workflow: FakeWorkflow) -> None:
        self.keys = FakeKeys()
        self.payments = FakePayments()
        self.orders = FakeOrders()
        self.velocity = FakeVelocity()
        self.workflow = workflow


def install_loaded(*modules: ModuleType) -> Fakes:
    """Like `install` (canned workflow, fake channel), patching only modules already loaded
    and `modules`: the cold-start bench must not import what a function never imports."""
    fakes = Fakes(FakeWorkflow("canned", False))
    factories: dict[str, Callable[[], Any]] = {
        "payment_store": lambda: fakes.payments,
        "order_store": lambda: fakes.orders,
        "api_keys": lambda: fakes.keys,
        "velocity_store": lambda: fakes.velocity,
        "workflow": lambda: fakes.workflow,
    }
    loaded = [m for n, m in list(sys.modules.items()) if n.startswith("payments.") and m]
    for module in (*loaded, *modules):
        for name, factory in factories.items():
            if name in vars(module) and module.__name__ != "payments.store":
                setattr(module, name, factory)
    services = sys.modules.get("payments.services")
    if services is not None:
        services.use_channel("stripe", FakeChannel())
    gateway = sys.modules.get("payments.api.gateway")
    if gateway is not None:
        setattr(gateway, "breaker", lambda _name: FakeBreaker())  # noqa: B010
    return fakes


def install(*, workflow: str = "inline", unwrap: bool = False, real_channel: bool = False) -> Fakes:
    """Point every module's store factories at in-memory fakes (call after loading handlers
    is not needed: handlers loaded later see the patched factories through the modules)."""
    import payments.api
    import payments.api.gateway
    import payments.api.refunds
    import payments.channel
    import payments.services

    fakes = Fakes(FakeWorkflow("none", unwrap))
    factories: dict[str, Callable[[], Any]] = {
        "payment_store": lambda: fakes.payments,
        "order_store": lambda: fakes.orders,
        "api_keys": lambda: fakes.keys,
        "velocity_store": lambda: fakes.velocity,
        "workflow": lambda: fakes.workflow,
    }
    for module in (payments.services, payments.api, payments.api.gateway, payments.api.refunds):
        for name, factory in factories.items():
            if hasattr(module, name):
                setattr(module, name, factory)
    setattr(payments.api.gateway, "breaker", lambda _name: FakeBreaker())  # noqa: B010
    if not real_channel:
        payments.services.use_channel("stripe", cast(Any, FakeChannel()))
    # Task handlers import `order_store`/`velocity_store` from payments.services at load time,
    # so the workflow's handlers are loaded only now, after the patch.
    fakes.workflow = FakeWorkflow(workflow, unwrap)
    return fakes
