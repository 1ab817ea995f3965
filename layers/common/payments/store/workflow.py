"""The payment workflow: a synchronous Express state machine execution."""

from __future__ import annotations

import json
from typing import Any

from payments.store.clients import stepfunctions


class WorkflowFailed(Exception):
    """The execution did not succeed (failed, timed out or aborted)."""

    def __init__(self, status: str, error: str | None) -> None:
        super().__init__(f"workflow {status}: {error}")
        self.status = status
        self.error = error


class PaymentWorkflow:
    def __init__(self, state_machine_arn: str) -> None:
        self.state_machine_arn = state_machine_arn

    def run(self, execution_input: dict[str, Any], *, name: str) -> dict[str, Any]:
        response = stepfunctions().start_sync_execution(
            stateMachineArn=self.state_machine_arn,
            name=name,
            input=json.dumps(execution_input, separators=(",", ":")),
        )
        if response["status"] != "SUCCEEDED":
            raise WorkflowFailed(response["status"], response.get("error"))
        output: dict[str, Any] = json.loads(response.get("output") or "{}")
        return output
