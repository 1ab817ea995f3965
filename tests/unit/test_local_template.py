"""Template model and in-process runtime: intrinsics, routes, environments, error shapes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from local.runtime import LambdaRuntime, UnknownFunctionError
from local.template import load_template

ROOT = Path(__file__).resolve().parents[2]

TEMPLATE = """\
Parameters:
  Stage: {Type: String, Default: dev}
  Size: {Type: Number, Default: 7}
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
  NotProd: !Not [!Condition IsProd]
  Both: !And [!Condition NotProd, !Or [!Equals [a, a], !Equals [a, b]]]
Mappings:
  Sizes: {dev: {mem: 512}, prod: {mem: 1024}}
Globals:
  Function:
    Timeout: 9
    Environment:
      Variables: {SHARED: !Sub "${AWS::Region}-${Stage}", WHICH: global}
Resources:
  Tbl:
    Type: AWS::DynamoDB::Table
    Properties:
      KeySchema: [{AttributeName: id, KeyType: HASH}]
      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
  SlowFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/slow
      MemorySize: !FindInMap [Sizes, !Ref Stage, mem]
      Environment:
        Variables:
          WHICH: own
          PROD: !If [IsProd, "yes", "no"]
          BOTH: !Condition Both
          JOINED: !Join ["/", [!Ref Tbl, !GetAtt Tbl.Arn]]
          PICK: !Select [1, !Split [",", "a,b,c"]]
          SUBVARS: !Sub ["${X}-${!Literal}-${Tbl}", {X: !Ref Size}]
          KEY: "{{resolve:ssm:/k}}"
          STRIPE_API_KEY: "{{resolve:secretsmanager:s:SecretString:api_key}}"
          FLOW: !GetAtt Flow.Arn
          FLOWNAME: !GetAtt Flow.Name
  BrokenFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: fn/broken}
  Flow:
    Type: AWS::Serverless::StateMachine
    Properties:
      Name: my-flow
      DefinitionUri: flow.json
      DefinitionSubstitutions: {Fn: !GetAtt SlowFunction.Arn}
"""

SLOW = """\
import threading, time, decimal
COLD = threading.get_ident()

def handler(event, context):
    if event.get("decimal"):
        return {"d": decimal.Decimal("1.5")}
    time.sleep(event.get("sleep", 0))
    return {"module": id(handler), "mem": context.memory_limit_in_mb,
            "version": context.function_version, "request": context.aws_request_id}
"""


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    (tmp_path / "fn" / "slow").mkdir(parents=True)
    (tmp_path / "fn" / "slow" / "app.py").write_text(SLOW)
    (tmp_path / "fn" / "broken").mkdir(parents=True)
    (tmp_path / "fn" / "broken" / "app.py").write_text("raise ImportError('no deps')\n")
    (tmp_path / "flow.json").write_text('{"F": "${Fn}"}')
    return tmp_path


def test_intrinsics_resolve_for_local_use(root: Path) -> None:
    tpl = load_template(root / "template.yaml")
    env = tpl.functions["SlowFunction"].environment
    assert env["SHARED"] == "us-east-1-dev" and env["WHICH"] == "own"
    assert env["PROD"] == "no" and env["BOTH"] == "true"
    assert env["JOINED"] == "Tbl/arn:aws:dynamodb:us-east-1:123456789012:table/Tbl"
    assert env["PICK"] == "b"
    assert env["SUBVARS"] == "7-${Literal}-Tbl"
    assert env["KEY"] == "local" and env["STRIPE_API_KEY"] == "sk_test_local"
    assert env["FLOW"] == "arn:aws:states:us-east-1:123456789012:stateMachine:my-flow"
    assert env["FLOWNAME"] == "my-flow"
    fn = tpl.functions["SlowFunction"]
    assert (fn.timeout, fn.memory, fn.handler) == (9, 512, "app.handler")
    sm = tpl.state_machine
    assert sm is not None and sm.type == "STANDARD"
    assert sm.definition() == '{"F": "arn:aws:lambda:us-east-1:123456789012:function:SlowFunction"}'
    assert tpl.tables["Tbl"].ttl_attribute is None


def test_overrides_win(root: Path) -> None:
    tpl = load_template(root / "template.yaml", {"Stage": "prod", "KEY": "mine"})
    env = tpl.functions["SlowFunction"].environment
    assert env["PROD"] == "yes" and env["KEY"] == "mine" and env["SHARED"] == "us-east-1-prod"


def test_find_function_by_id_dir_or_arn(root: Path) -> None:
    tpl = load_template(root / "template.yaml")
    assert tpl.find_function("slow") is tpl.functions["SlowFunction"]
    arn = "arn:aws:lambda:us-east-1:123456789012:function:SlowFunction:$LATEST"
    assert tpl.find_function(arn) is tpl.functions["SlowFunction"]
    assert tpl.find_function("nope") is None


def test_concurrent_invocations_get_their_own_environment(root: Path) -> None:
    runtime = LambdaRuntime(load_template(root / "template.yaml"))
    results: list[dict[str, object]] = []

    def call() -> None:
        result, error = runtime.invoke("SlowFunction", {"sleep": 0.2})
        assert error is None
        results.append(result)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runtime.cold_starts["SlowFunction"] == 3
    assert len({r["module"] for r in results}) == 3  # one module object per environment
    warm, _ = runtime.invoke("slow", {})
    assert runtime.cold_starts["SlowFunction"] == 3  # reused a warm one
    assert warm["mem"] == 512 and warm["version"] == "$LATEST"


def test_error_shapes(root: Path) -> None:
    runtime = LambdaRuntime(load_template(root / "template.yaml"))
    _, marshal = runtime.invoke("SlowFunction", {"decimal": True})
    assert marshal is not None and marshal["errorType"] == "Runtime.MarshalError"
    _, imp = runtime.invoke("BrokenFunction", {})
    assert imp is not None and imp["errorType"] == "Runtime.ImportModuleError"
    with pytest.raises(UnknownFunctionError):
        runtime.invoke("Nope", {})


def test_project_template_routes() -> None:
    tpl = load_template(ROOT / "template.yaml")
    keys = {(r.method, r.path) for r in tpl.routes}
    assert ("POST", "/api/v1/payments") in keys
    assert ("POST", "/api/v1/payments/{payment_no}/refunds") in keys
    sm = tpl.state_machine
    assert sm is not None and sm.type == "EXPRESS" and "${" not in sm.definition()


def test_layers_are_importable_like_on_lambda() -> None:
    root = Path(__file__).resolve().parents[2]
    template = load_template(root / "template.yaml")
    assert template.layer_dirs == [root / "layers" / "common"]
    LambdaRuntime(template)
    import sys

    assert str(root / "layers" / "common") in sys.path
