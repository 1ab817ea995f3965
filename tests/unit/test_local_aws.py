"""The local AWS emulator: DynamoDB lock, Lambda Invoke, StartSyncExecution, provisioning."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local.aws import EmulatorHandle, start_emulator
from local.runtime import UnknownFunctionError

TEMPLATE = """\
Parameters:
  Greeting:
    Type: String
    Default: hello
Resources:
  ItemsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub ${AWS::StackName}-items
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - {AttributeName: pk, AttributeType: S}
        - {AttributeName: sk, AttributeType: S}
      KeySchema: [{AttributeName: pk, KeyType: HASH}, {AttributeName: sk, KeyType: RANGE}]
      TimeToLiveSpecification: {AttributeName: ttl, Enabled: true}
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/echo/
      Handler: app.handler
      Timeout: 5
      Environment:
        Variables:
          GREETING: !Ref Greeting
          TABLE: !Ref ItemsTable
          SECRET: "{{resolve:ssm:/x/y}}"
  Flow:
    Type: AWS::Serverless::StateMachine
    Properties:
      Type: EXPRESS
      DefinitionUri: flow.asl.json
      DefinitionSubstitutions:
        EchoArn: !GetAtt EchoFunction.Arn
"""

APP = """\
import os

def handler(event, context):
    if event.get("boom"):
        raise ValueError("kaboom")
    return {"echo": event, "greeting": os.environ["GREETING"], "fn": context.function_name,
            "remaining": context.get_remaining_time_in_millis()}
"""

FLOW = {
    "StartAt": "Call",
    "States": {
        "Call": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": "${EchoArn}", "Payload.$": "$"},
            "ResultSelector": {"result.$": "$.Payload"},
            "Retry": [
                {
                    "ErrorEquals": ["Lambda.ServiceException"],
                    "MaxAttempts": 2,
                    "MaxDelaySeconds": 4,
                    "JitterStrategy": "FULL",
                }
            ],
            "Next": "Done",
        },
        "Done": {"Type": "Pass", "Result": "ok", "ResultPath": "$.outcome", "End": True},
    },
}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorHandle]:
    root: Path = tmp_path_factory.mktemp("stack")
    (root / "template.yaml").write_text(TEMPLATE)
    (root / "fn" / "echo").mkdir(parents=True)
    (root / "fn" / "echo" / "app.py").write_text(APP)
    (root / "flow.asl.json").write_text(json.dumps(FLOW))
    handle = start_emulator(str(root / "template.yaml"), env_overrides={"Greeting": "hi"})
    yield handle
    handle.stop()


def test_provisions_tables_with_ttl_and_demo_key(emulator: EmulatorHandle) -> None:
    ddb = emulator.client("dynamodb")
    assert emulator.tables == {"ItemsTable": "payments-local-items"}
    ttl = ddb.describe_time_to_live(TableName="payments-local-items")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "ttl"
    item = ddb.get_item(
        TableName="payments-local-items", Key={"pk": {"S": "APIKEY#mk_demo"}, "sk": {"S": "APIKEY"}}
    )
    assert item["Item"]["secret"] == {"S": "sk_demo_secret"}
    assert item["Item"]["merchant_id"] == {"S": "merch_demo"}


def test_env_resolves_intrinsics(emulator: EmulatorHandle) -> None:
    assert emulator.env["GREETING"] == "hi"
    assert emulator.env["TABLE"] == "payments-local-items"
    assert emulator.env["SECRET"] == "local"
    assert emulator.env["AWS_ENDPOINT_URL"] == emulator.url


def test_lambda_invoke_success_and_unhandled_error(emulator: EmulatorHandle) -> None:
    lam = emulator.client("lambda")
    ok = lam.invoke(FunctionName="EchoFunction", Payload=json.dumps({"a": 1}))
    body = json.loads(ok["Payload"].read())
    assert "FunctionError" not in ok
    assert body["echo"] == {"a": 1} and body["greeting"] == "hi" and body["fn"] == "EchoFunction"
    assert 0 < body["remaining"] <= 5000
    bad = lam.invoke(
        FunctionName="arn:aws:lambda:us-east-1:123456789012:function:EchoFunction",
        Payload=json.dumps({"boom": True}),
    )
    assert bad["FunctionError"] == "Unhandled"
    err = json.loads(bad["Payload"].read())
    assert err["errorType"] == "ValueError" and err["errorMessage"] == "kaboom"
    assert isinstance(err["stackTrace"], list)


def test_lambda_invoke_unknown_function(emulator: EmulatorHandle) -> None:
    with pytest.raises(ClientError) as exc:
        emulator.client("lambda").invoke(FunctionName="Nope", Payload=b"{}")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_start_sync_execution_runs_real_asl(emulator: EmulatorHandle) -> None:
    sfn = emulator.client("stepfunctions")
    assert emulator.state_machine_arn is not None
    out = sfn.start_sync_execution(
        stateMachineArn=emulator.state_machine_arn, input=json.dumps({"x": 1})
    )
    assert out["status"] == "SUCCEEDED", out
    result = json.loads(out["output"])
    assert result["outcome"] == "ok"
    assert result["result"]["echo"] == {"x": 1}
    assert out["billingDetails"]["billedDurationInMilliseconds"] >= 0
    assert ":express:" in out["executionArn"]


def test_start_sync_execution_failure_shape(emulator: EmulatorHandle) -> None:
    sfn = emulator.client("stepfunctions")
    assert emulator.state_machine_arn is not None
    out = sfn.start_sync_execution(
        stateMachineArn=emulator.state_machine_arn, input=json.dumps({"boom": True})
    )
    assert out["status"] == "FAILED"
    assert out["error"] == "ValueError"
    assert "kaboom" in out["cause"]
    with pytest.raises(ClientError):
        sfn.start_sync_execution(stateMachineArn=emulator.state_machine_arn + "x", input="{}")


def test_conditional_updates_are_serialised(emulator: EmulatorHandle) -> None:
    ddb = emulator.client("dynamodb")
    key = {"pk": {"S": "counter"}, "sk": {"S": "c"}}
    ddb.put_item(TableName="payments-local-items", Item={**key, "n": {"N": "10"}})
    successes: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        client = boto3.client(
            "dynamodb",
            endpoint_url=emulator.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        try:
            client.update_item(
                TableName="payments-local-items",
                Key=key,
                UpdateExpression="SET n = n - :a",
                ConditionExpression="n >= :a",
                ExpressionAttributeValues={":a": {"N": "1"}},
            )
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
            return
        with lock:
            successes.append(1)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(successes) == 10
    final = ddb.get_item(TableName="payments-local-items", Key=key)["Item"]["n"]
    assert final == {"N": "0"}


class FakeRuntime:
    env: dict[str, str] = {}

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def function(self, name: str) -> str:
        if "Missing" in name:
            raise UnknownFunctionError(name)
        return name

    def invoke(self, name: str, payload: Any) -> tuple[Any, dict[str, Any] | None]:
        self.calls.append((name, payload))
        if payload.get("fail"):
            return None, {"errorType": "Boom", "errorMessage": "x", "stackTrace": []}
        return {"got": payload}, None


def test_invoke_routes_to_given_runtime(tmp_path: Path) -> None:
    # A second emulator in the same process resets moto: run it after the module fixture.
    (tmp_path / "template.yaml").write_text("Resources: {}\n")
    fake = FakeRuntime()
    handle = start_emulator(str(tmp_path / "template.yaml"), runtime=fake)
    try:
        lam = handle.client("lambda")
        out = lam.invoke(FunctionName="Anything", Payload=b'{"k": 2}')
        assert json.loads(out["Payload"].read()) == {"got": {"k": 2}}
        err = lam.invoke(FunctionName="Anything", Payload=b'{"fail": 1}')
        assert err["FunctionError"] == "Unhandled"
        assert lam.invoke(FunctionName="Anything", InvocationType="DryRun")["StatusCode"] == 204
        assert (
            lam.invoke(FunctionName="Anything", InvocationType="Event", Payload=b"{}")["StatusCode"]
            == 202
        )
        assert handle.state_machine_arn is None
        sfn = handle.client("stepfunctions")
        std = sfn.create_state_machine(
            name="std",
            definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
            roleArn="arn:aws:iam::123456789012:role/x",
        )
        with pytest.raises(ClientError) as exc:
            sfn.start_sync_execution(stateMachineArn=std["stateMachineArn"], input="{}")
        assert exc.value.response["Error"]["Code"] == "StateMachineTypeNotSupported"
    finally:
        handle.stop()
    assert fake.calls[0] == ("Anything", {"k": 2})
