"""The payment workflow: a synchronous Express state machine execution."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from payments.records import dump_json, load_json
from payments.store.clients import stepfunctions
from payments.tasks import WorkflowInput, WorkflowOutput


class WorkflowNotStarted(Exception):
    """Step Functions refused to start the execution: no task ran."""


class WorkflowFailed(Exception):
    """The execution did not finish with an output we could read (failed, timed out,
    aborted, or the answer was lost): any of its tasks may have run."""

    def __init__(self, status: str, error: str | None) -> None:
        super().__init__(f"workflow {status}: {error}")
        self.status = status
        self.error = error


class PaymentWorkflow:
    def __init__(self, state_machine_arn: str) -> None:
        self.state_machine_arn = state_machine_arn

    def run(self, execution_input: WorkflowInput, *, name: str) -> WorkflowOutput:
        try:
            response = stepfunctions().start_sync_execution(
                stateMachineArn=self.state_machine_arn,
                name=name,
                input=dump_json(execution_input),
            )
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
            if status >= 500:  # the service failed while handling it: it may have run
                raise WorkflowFailed("UNKNOWN", code) from err
            raise WorkflowNotStarted(code) from err
        except BotoCoreError as err:  # timeout, connection lost: it may have run
            raise WorkflowFailed("UNKNOWN", type(err).__name__) from err
        if response["status"] != "SUCCEEDED":
            raise WorkflowFailed(response["status"], response.get("error"))
        return load_json(WorkflowOutput, response.get("output") or "{}")
