"""The state machine against its typed contract (payments.tasks): every Task catches
everything, every path ends in exactly one WorkflowOutcome, every Choice compares against
the enum of the task result it reads, and the gateway settles every outcome."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from payments.channel import CallOutcome
from payments.logic.payments import SETTLES_TO
from payments.models import PaymentStatus
from payments.records import load
from payments.tasks import (
    CHOICE_VARIABLES,
    ChannelTaskInput,
    OrderTaskInput,
    Step,
    TaskInput,
    WorkflowOutcome,
    WorkflowOutput,
)

ROOT = Path(__file__).resolve().parents[2]
ASL: dict[str, Any] = json.loads((ROOT / "statemachine" / "payment_workflow.asl.json").read_text())
STATES: dict[str, dict[str, Any]] = ASL["States"]
TASK_MODELS = {
    Step.RISK_CHECK: TaskInput,
    Step.CREATE_ORDER: OrderTaskInput,
    Step.CHANNEL_PAYMENT: ChannelTaskInput,
    Step.MARK_ORDER_PAID: OrderTaskInput,
    Step.CANCEL_ORDER: OrderTaskInput,
}


def _rules(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparison of a Choice rule, nested Or/And/Not included."""
    out = []
    for key in ("Or", "And"):
        for nested in choice.get(key, []):
            out += _rules(nested)
    if "Not" in choice:
        out += _rules(choice["Not"])
    if "Variable" in choice:
        out.append(choice)
    return out


def _successors(name: str) -> list[str]:
    state = STATES[name]
    nexts = [state["Next"]] if "Next" in state else []
    nexts += [c["Next"] for c in state.get("Catch", [])]
    if state["Type"] == "Choice":
        nexts += [c["Next"] for c in state["Choices"]] + [state["Default"]]
    return nexts


def _paths() -> list[list[str]]:
    """Every path from StartAt to an End state (the ASL has no loops)."""
    done: list[list[str]] = []
    stack = [[ASL["StartAt"]]]
    while stack:
        path = stack.pop()
        successors = _successors(path[-1])
        if not successors:
            done.append(path)
        for nxt in successors:
            assert nxt not in path, f"loop through {nxt}"
            stack.append([*path, nxt])
    return done


def test_every_task_catches_everything_and_has_a_bounded_timeout() -> None:
    tasks = {n: s for n, s in STATES.items() if s["Type"] == "Task"}
    assert set(tasks) == {s.value for s in Step}
    for name, state in tasks.items():
        catchers = state.get("Catch", [])
        assert catchers and catchers[-1]["ErrorEquals"] == ["States.ALL"], name
        assert state["TimeoutSeconds"] < ASL["TimeoutSeconds"], name
        # Failures are routed by the Catch, never matched by (Python) error names.
        for catcher in catchers:
            assert catcher["ErrorEquals"] == ["States.ALL"], name
        for retrier in state.get("Retry", []):
            assert all(e.startswith("Lambda.") for e in retrier["ErrorEquals"]), name


def test_every_path_ends_in_exactly_one_outcome() -> None:
    paths = _paths()
    reached = set()
    for path in paths:
        end = STATES[path[-1]]
        assert end["Type"] == "Pass" and end.get("End") is True, path
        assert end["ResultPath"] == "$.outcome", path
        reached.add(WorkflowOutcome(end["Result"]))  # ValueError: not an outcome
        writes = [n for n in path if STATES[n].get("ResultPath") == "$.outcome"]
        assert writes == [path[-1]], f"outcome written more than once on {path}"
    assert reached == set(WorkflowOutcome), "every outcome is reachable, none is dead"


def test_choices_compare_against_the_task_result_enums() -> None:
    for name, state in STATES.items():
        if state["Type"] != "Choice":
            continue
        assert "Default" in state, name
        for choice in state["Choices"]:
            for rule in _rules(choice):
                enum = CHOICE_VARIABLES[rule["Variable"]]
                assert rule["StringEquals"] in {m.value for m in enum}, (name, rule)


def test_every_charge_outcome_is_routed_and_unknown_never_cancels() -> None:
    routed = {r["StringEquals"] for c in STATES["ChargeOutcome"]["Choices"] for r in _rules(c)}
    assert routed == {o.value for o in CallOutcome} - {"unknown"}
    assert STATES[STATES["ChargeOutcome"]["Default"]]["Result"] == "charge_unknown"
    # A crashed charge task (Catch) may have charged: it must keep the order.
    [catcher] = STATES["ChannelPayment"]["Catch"]
    assert STATES[catcher["Next"]]["Result"] == WorkflowOutcome.CHARGE_UNKNOWN.value


def _sample(path: str) -> Any:
    samples: dict[str, Any] = {
        "$.trace_context": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        "$.payment": {
            "payment_no": "pay_1",
            "merchant_id": "m",
            "merchant_order_no": "o-1",
            "amount": 100,
            "currency": "USD",
            "channel": "stripe",
            "payment_method": "pm_card_visa",
            "created_at": "2026-01-01T00:00:00.000Z",
        },
        "$.order.result": {"order_no": "ord_1", "status": "created"},
    }
    return samples[path]


@pytest.mark.parametrize("step", list(Step))
def test_task_payloads_are_their_handlers_input_models(step: Step) -> None:
    state = STATES[step.value]
    payload = {
        key.removesuffix(".$"): _sample(value) if key.endswith(".$") else value
        for key, value in state["Parameters"]["Payload"].items()
    }
    model = load(TASK_MODELS[step], payload)
    assert model.step is step
    assert re.fullmatch(r"\$\{\w+FunctionArn\}", state["Parameters"]["FunctionName"])
    # The result lands where WorkflowOutput reads it.
    field = state["ResultPath"].removeprefix("$.")
    assert field in WorkflowOutput.__struct_fields__, step


def test_the_gateway_settles_every_outcome_and_only_a_charge_succeeds() -> None:
    assert set(SETTLES_TO) == set(WorkflowOutcome)
    charged = {o for o, status in SETTLES_TO.items() if status is PaymentStatus.SUCCEEDED}
    assert charged == {WorkflowOutcome.SUCCEEDED, WorkflowOutcome.CHARGED}
    assert SETTLES_TO[WorkflowOutcome.CHARGE_UNKNOWN] is None  # left for reconciliation
