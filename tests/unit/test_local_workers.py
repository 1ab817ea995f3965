"""The process-isolated runtime of `make run`: one process per execution environment."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from local.runtime import UnknownFunctionError
from local.template import load_template
from local.workers import ProcessRuntime

TEMPLATE = """\
Globals:
  Function:
    Timeout: 2
    Environment:
      Variables: {SHARED: shared}
Resources:
  AFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/a
      Handler: app.handler
      Environment: {Variables: {OWN: a}}
  BFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/a
      Handler: app.handler
      Environment: {Variables: {OWN: b}}
  BrokenFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: fn/broken, Handler: app.handler}
"""

HANDLER = """\
import decimal, os, time
CALLS = 0  # module state: per execution environment

def handler(event, context):
    global CALLS
    CALLS += 1
    if event.get("fail"):
        raise ValueError("declined by test")
    if event.get("decimal"):
        return {"d": decimal.Decimal("1")}
    time.sleep(event.get("sleep", 0))
    return {"own": os.environ["OWN"], "shared": os.environ["SHARED"], "calls": CALLS,
            "name": os.environ["AWS_LAMBDA_FUNCTION_NAME"], "pid": os.getpid(),
            "ctx": context.function_name}
"""


@pytest.fixture()
def runtime(tmp_path: Path) -> Iterator[ProcessRuntime]:
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    (tmp_path / "fn" / "a").mkdir(parents=True)
    (tmp_path / "fn" / "a" / "app.py").write_text(HANDLER)
    (tmp_path / "fn" / "broken").mkdir(parents=True)
    (tmp_path / "fn" / "broken" / "app.py").write_text("raise RuntimeError('init failed')\n")
    rt = ProcessRuntime(
        load_template(tmp_path / "template.yaml"), {"SHARED": "override"}, prewarm=False
    )
    try:
        yield rt
    finally:
        rt.close()


def test_each_function_has_its_own_environment_and_module_state(runtime: ProcessRuntime) -> None:
    a1, err = runtime.invoke("AFunction", {})
    assert err is None
    a2, _ = runtime.invoke("AFunction", {})
    b1, _ = runtime.invoke("BFunction", {})
    assert (a1["own"], b1["own"]) == ("a", "b")
    assert a1["shared"] == "override"  # the stack's overrides win over the template
    assert (a1["name"], b1["name"], a1["ctx"]) == ("AFunction", "BFunction", "AFunction")
    assert (a1["calls"], a2["calls"], b1["calls"]) == (1, 2, 1)  # warm reuse, separate state
    assert a1["pid"] == a2["pid"] != b1["pid"]
    assert runtime.cold_starts == {"AFunction": 1, "BFunction": 1}


def test_concurrent_invocations_cold_start_more_environments(runtime: ProcessRuntime) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: runtime.invoke("AFunction", {"sleep": 0.5}), range(2)))
    assert {r["pid"] for r, _ in results} == {results[0][0]["pid"], results[1][0]["pid"]}
    assert results[0][0]["pid"] != results[1][0]["pid"]
    assert runtime.cold_starts["AFunction"] == 2


def test_errors_have_lambda_shapes(runtime: ProcessRuntime) -> None:
    _, err = runtime.invoke("AFunction", {"fail": True})
    assert err is not None and err["errorType"] == "ValueError"
    assert err["errorMessage"] == "declined by test"
    _, err = runtime.invoke("AFunction", {"decimal": True})
    assert err is not None and err["errorType"] == "Runtime.MarshalError"
    _, err = runtime.invoke("BrokenFunction", {})
    assert err is not None and err["errorType"] == "Runtime.ImportModuleError"
    with pytest.raises(UnknownFunctionError):
        runtime.invoke("Nope", {})


def test_timeout_ends_the_environment(runtime: ProcessRuntime) -> None:
    first, _ = runtime.invoke("AFunction", {})
    _, err = runtime.invoke("AFunction", {"sleep": 5})  # the template's Timeout is 2 s
    assert err == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "Task timed out after 2.00 seconds",
    }
    after, _ = runtime.invoke("AFunction", {})
    assert after["pid"] != first["pid"] and after["calls"] == 1  # a fresh environment
