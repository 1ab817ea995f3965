"""Function fault injection: the table, `/_local/faults`, both runtimes, AWS-call faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from local.api import ApiGateway
from local.aws import aws_call_of, start_emulator
from local.faults import FAULTS, AwsCall, FaultError, FaultTable
from local.runtime import LambdaRuntime
from local.template import load_template


@pytest.fixture(autouse=True)
def _no_faults() -> Iterator[None]:
    FAULTS.clear()
    yield
    FAULTS.clear()


def test_specs_are_validated() -> None:
    table = FaultTable()
    fault = table.add({"function": "F", "action": "delay", "delay_ms": 5, "count": 2})
    assert fault.to_json() | {"id": "x"} == {
        "id": "x",
        "function": "F",
        "action": "delay",
        "step": None,
        "delay_ms": 5,
        "count": 2,
        "match": None,
        "skip": 0,
        "seen": 0,
        "fired": 0,
        "remaining": 2,
    }
    for bad, message in (
        ([], "a fault is a JSON object"),
        ({"action": "crash_before"}, "function is required"),
        ({"function": "F", "action": "explode"}, "action must be one of"),
        ({"function": "F", "action": "delay"}, "delay needs delay_ms > 0"),
        ({"function": "F", "action": "crash_after", "count": 0}, "count must be"),
        ({"function": "F", "action": "crash_after", "skip": -1}, "skip must be"),
        ({"function": "F", "action": "crash_after", "count": True}, "count must be"),
        ({"function": "F", "action": "crash_after", "step": "Dynamo."}, "<Service>.<Operation>"),
        ({"function": "F", "action": "crash_after", "colour": "red"}, "unknown field"),
    ):
        with pytest.raises(FaultError, match=message):
            table.add(bad)


def test_step_match_skip_and_count() -> None:
    table = FaultTable()
    table.add(
        {
            "function": "F",
            "action": "crash_after",
            "step": "Charge",
            "match": "order-7",
            "skip": 1,
            "count": 2,
        }
    )

    def fires(event: dict[str, Any], function: str = "F") -> bool:
        return table.for_invocation(function, event, json.dumps(event)) is not None

    assert not fires({"step": "Charge", "id": "order-7"}, function="G")  # another function
    assert not fires({"step": "Other", "id": "order-7"})  # another step
    assert not fires({"step": "Charge", "id": "order-8"})  # no match
    assert not fires({"step": "Charge", "id": "order-7"})  # skipped (1st match)
    assert fires({"step": "Charge", "id": "order-7"})  # 2nd match
    assert fires({"step": "Charge", "id": "order-7"})  # 3rd
    assert not fires({"step": "Charge", "id": "order-7"})  # count spent
    (listed,) = table.snapshot()
    assert (listed["seen"], listed["fired"], listed["remaining"]) == (3, 2, 0)  # spent: not counted
    assert table.clear() == 1 and table.snapshot() == []


def test_aws_call_points_match_service_and_operation() -> None:
    table = FaultTable()
    table.add({"function": "F", "action": "crash_after", "step": "DynamoDB.TransactWriteItems"})
    table.add(
        {"function": "F", "action": "delay", "delay_ms": 1, "step": "States.StartSyncExecution"}
    )
    ddb = AwsCall("dynamodb", "DynamoDB_20120810", "TransactWriteItems")
    sfn = AwsCall("states", "AWSStepFunctions", "StartSyncExecution")
    assert table.for_invocation("F", {}, "{}") is None  # AWS-call faults never hit invocations
    assert (
        table.for_aws_call("F", AwsCall("dynamodb", "DynamoDB_20120810", "GetItem"), ("",)) is None
    )
    hit = table.for_aws_call("F", ddb, ("",))
    assert hit is not None and hit.action == "crash_after"
    hit = table.for_aws_call("F", sfn, ("",))
    assert hit is not None and hit.action == "delay"


def test_the_middleware_names_caller_and_call() -> None:
    auth = (
        "AWS4-HMAC-SHA256 Credential=ASIALOCAL0123/20260101/us-east-1/dynamodb/aws4_request, "
        "SignedHeaders=host, Signature=abc"
    )
    environ = {
        "HTTP_AUTHORIZATION": auth,
        "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.PutItem",
        "PATH_INFO": "/",
    }
    assert aws_call_of(environ) == (
        "ASIALOCAL0123",
        AwsCall("dynamodb", "DynamoDB_20120810", "PutItem"),
    )
    invoke = {
        "HTTP_AUTHORIZATION": auth.replace("dynamodb", "lambda"),
        "PATH_INFO": "/2015-03-31/functions/F/invocations",
    }
    assert aws_call_of(invoke) == ("ASIALOCAL0123", AwsCall("lambda", "", "Invoke"))
    assert aws_call_of({"PATH_INFO": "/"}) is None  # unsigned


APP_TEMPLATE = """\
Resources:
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: app.handler
      Events:
        Root:
          Type: HttpApi
          Properties: {Path: /echo, Method: POST}
"""
APP = """\
import json
CALLS = []

def handler(event, context):
    CALLS.append(event)
    return {"statusCode": 200, "body": json.dumps({"calls": len(CALLS)})}
"""


@pytest.fixture()
def api(tmp_path: Path) -> ApiGateway:
    (tmp_path / "template.yaml").write_text(APP_TEMPLATE)
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text(APP)
    template = load_template(tmp_path / "template.yaml")
    return ApiGateway(template, LambdaRuntime(template))


def test_faults_api(api: ApiGateway) -> None:
    client = Client(api)
    spec = {"function": "EchoFunction", "action": "crash_before", "match": "m-1"}
    created = client.post("/_local/faults", json=spec)
    assert created.status_code == 201 and created.json is not None
    assert created.json["id"].startswith("flt_") and created.json["remaining"] == 1
    assert created.headers["X-Trace-ID"]
    listed = client.get("/_local/faults").json
    assert listed is not None and [f["id"] for f in listed["data"]] == [created.json["id"]]
    for body, message in (
        ({"function": "Nope", "action": "crash_before"}, "unknown function Nope"),
        ({"function": "EchoFunction", "action": "nope"}, "action must be one of"),
    ):
        bad = client.post("/_local/faults", json=body)
        assert bad.status_code == 400 and bad.json is not None
        assert bad.json["error"]["code"] == "invalid_request"
        assert message in bad.json["error"]["message"]
    assert client.post("/_local/faults", data=b"{").status_code == 400
    assert client.put("/_local/faults").status_code == 405
    crashed = client.post("/echo", data=b'{"order": "m-1"}')
    assert crashed.status_code == 500 and crashed.json is not None
    assert crashed.json["error"]["code"] == "internal_error"
    assert client.post("/echo", data=b'{"order": "m-1"}').status_code == 200  # spent
    assert client.delete("/_local/faults").json == {"deleted": 1}
    assert client.get("/_local/faults").json == {"data": []}


def test_in_process_runtime_honours_invocation_faults(api: ApiGateway) -> None:
    runtime = api.runtime
    module_calls = lambda: runtime.invoke("EchoFunction", {"probe": 1})[0]["body"]  # noqa: E731
    assert json.loads(module_calls())["calls"] == 1
    FAULTS.add({"function": "EchoFunction", "action": "crash_before"})
    _, err = runtime.invoke("EchoFunction", {"x": 1})
    assert err is not None and err["errorType"] == "Runtime.ExitError"
    assert json.loads(module_calls())["calls"] == 2  # nothing ran; the environment lives on
    FAULTS.add({"function": "EchoFunction", "action": "crash_after"})
    _, err = runtime.invoke("EchoFunction", {"x": 2})
    assert err is not None and err["errorMessage"].endswith("signal: killed")
    assert json.loads(module_calls())["calls"] == 1  # the "killed" module is not reused
    FAULTS.add({"function": "EchoFunction", "action": "delay", "delay_ms": 300})
    began = time.monotonic()
    assert runtime.invoke("EchoFunction", {})[1] is None
    assert time.monotonic() - began >= 0.3


DDB_TEMPLATE = """\
Resources:
  ItemsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: items
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}]
  WriterFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/
      Handler: app.handler
      Timeout: 10
"""
WRITER = """\
import boto3
CLIENT = boto3.client("dynamodb")

def handler(event, context):
    CLIENT.put_item(TableName="items", Item={"pk": {"S": event["pk"]}})
    return {"wrote": event["pk"]}
"""


def test_aws_call_faults_kill_the_calling_environment(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text(DDB_TEMPLATE)
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text(WRITER)
    emulator = start_emulator(str(tmp_path / "template.yaml"), isolated=True)
    try:
        runtime, ddb = emulator.runtime, emulator.client("dynamodb")

        def stored(pk: str) -> bool:
            return "Item" in ddb.get_item(TableName="items", Key={"pk": {"S": pk}})

        assert runtime.invoke("WriterFunction", {"pk": "warm"}) == ({"wrote": "warm"}, None)
        FAULTS.add(
            {
                "function": "WriterFunction",
                "action": "crash_after",
                "step": "DynamoDB.PutItem",
                "match": "after-1",
            }
        )
        assert runtime.invoke("WriterFunction", {"pk": "other"})[1] is None  # no match
        _, err = runtime.invoke("WriterFunction", {"pk": "after-1"})
        assert err is not None and err["errorType"] == "Runtime.ExitError"
        assert err["errorMessage"].endswith("signal: killed")
        assert stored("after-1")  # the write happened, the answer never arrived
        FAULTS.add(
            {"function": "WriterFunction", "action": "crash_before", "step": "dynamodb.putitem"}
        )
        _, err = runtime.invoke("WriterFunction", {"pk": "before-1"})
        assert err is not None and err["errorType"] == "Runtime.ExitError"
        assert not stored("before-1")  # killed before the call was performed
        assert runtime.invoke("WriterFunction", {"pk": "fine"}) == ({"wrote": "fine"}, None)
        assert [f["fired"] for f in FAULTS.snapshot()] == [1, 1]
    finally:
        emulator.stop()


FLOW_TEMPLATE = """\
Resources:
  StepFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: fn/, Handler: app.handler}
  Flow:
    Type: AWS::Serverless::StateMachine
    Properties:
      Type: EXPRESS
      DefinitionUri: flow.asl.json
      DefinitionSubstitutions: {StepArn: !GetAtt StepFunction.Arn}
"""
FLOW = {
    "StartAt": "Charge",
    "States": {
        "Charge": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": "${StepArn}", "Payload": {"step": "Charge"}},
            "End": True,
        }
    },
}


def test_step_functions_see_runtime_exit_error(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text(FLOW_TEMPLATE)
    (tmp_path / "flow.asl.json").write_text(json.dumps(FLOW))
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "app.py").write_text("def handler(event, context):\n    return event\n")
    emulator = start_emulator(str(tmp_path / "template.yaml"))
    try:
        sfn = emulator.client("stepfunctions")
        assert emulator.state_machine_arn is not None
        FAULTS.add({"function": "StepFunction", "action": "crash_after", "step": "Charge"})
        out = sfn.start_sync_execution(stateMachineArn=emulator.state_machine_arn, input="{}")
        assert (out["status"], out["error"]) == ("FAILED", "Runtime.ExitError")
        assert "Runtime exited with error: signal: killed" in out["cause"]
        out = sfn.start_sync_execution(stateMachineArn=emulator.state_machine_arn, input="{}")
        assert out["status"] == "SUCCEEDED"  # count 1: spent
    finally:
        emulator.stop()
