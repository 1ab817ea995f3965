"""The process runtime of `make run`: every environment is `python -m awslambdaric`.

Real processes against the stack's Runtime/Extensions API: the protocol, Lambda's error
payloads, timeouts, REPORT lines, the pool's cap and queue, dead environments, faults.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from local.faults import FAULTS
from local.runtime import TooManyRequestsError, UnknownFunctionError
from local.template import load_template
from local.workers import Limits, ProcessRuntime

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

TEMPLATE = """\
Globals:
  Function:
    Timeout: 2
    Environment:
      Variables: {SHARED: shared}
Resources:
  Layer:
    Type: AWS::Serverless::LayerVersion
    Properties: {ContentUri: layer/}
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
  OneFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/a
      Handler: app.handler
      ReservedConcurrentExecutions: 1
      Environment: {Variables: {OWN: one}}
  OffFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn/a
      Handler: app.handler
      ReservedConcurrentExecutions: 0
      Environment: {Variables: {OWN: off}}
  MissingFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: fn/missing, Handler: app.handler}
  BrokenFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: fn/broken, Handler: app.handler}
"""

HANDLER = """\
import os, signal, time
import layermod
CALLS = 0  # module state: per execution environment
NAMES = ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
         "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_RUNTIME_API", "_HANDLER",
         "LAMBDA_TASK_ROOT", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_EXECUTION_ENV",
         "AWS_ACCESS_KEY_ID", "TZ")

def handler(event, context):
    global CALLS
    CALLS += 1
    if event.get("touch"):
        with open(event["touch"], "a") as f:
            f.write(context.aws_request_id + "\\n")
    if event.get("fail"):
        raise ValueError("declined by test")
    if event.get("unserialisable"):
        return {"s": {1, 2}}
    if event.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    if "exit" in event:
        os._exit(event["exit"])
    time.sleep(event.get("sleep", 0))
    return {"own": os.environ["OWN"], "shared": os.environ["SHARED"], "calls": CALLS,
            "pid": os.getpid(), "ctx": context.function_name, "cwd": os.getcwd(),
            "request_id": context.aws_request_id, "arn": context.invoked_function_arn,
            "remaining": context.get_remaining_time_in_millis(), "layer": layermod.VALUE,
            "env": {k: os.environ.get(k) for k in NAMES}}
"""


def _write_functions(root: Path) -> Path:
    (root / "template.yaml").write_text(TEMPLATE)
    for name, code in (
        ("a", HANDLER),
        ("missing", "import no_such_module_here\n"),
        ("broken", "raise RuntimeError('init failed')\n"),
    ):
        (root / "fn" / name).mkdir(parents=True)
        (root / "fn" / name / "app.py").write_text(code)
    (root / "layer").mkdir()
    (root / "layer" / "layermod.py").write_text("VALUE = 'from the layer'\n")
    return root / "template.yaml"


@pytest.fixture()
def tpl(tmp_path: Path) -> Path:
    return _write_functions(tmp_path)


@pytest.fixture()
def runtime(tpl: Path) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime(load_template(tpl), {"SHARED": "override"}, prewarm=False)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(autouse=True)
def _no_faults() -> Iterator[None]:
    FAULTS.clear()
    yield
    FAULTS.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def _reports(runtime: ProcessRuntime, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """REPORT lines so far: an invocation reports once its post-runtime phase is over."""
    deadline = time.monotonic() + 5
    while not all(env.sandbox.idle() for env in runtime.environments("AFunction")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("REPORT")]


def test_each_environment_is_lambdas(runtime: ProcessRuntime, tpl: Path) -> None:
    a1, err = runtime.invoke("AFunction", {})
    assert err is None
    a2, _ = runtime.invoke("AFunction", {})
    b1, _ = runtime.invoke("BFunction", {})
    assert (a1["own"], b1["own"], a1["shared"]) == ("a", "b", "override")
    assert (a1["calls"], a2["calls"], b1["calls"]) == (1, 2, 1)  # warm reuse, separate state
    assert a1["pid"] == a2["pid"] != b1["pid"]
    assert runtime.cold_starts == {"AFunction": 1, "BFunction": 1}
    env = a1["env"]
    code_dir = str(tpl.parent / "fn" / "a")
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == a1["ctx"] == "AFunction"
    assert (env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], env["AWS_LAMBDA_FUNCTION_VERSION"]) == (
        "128",
        "$LATEST",
    )
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["AWS_LAMBDA_RUNTIME_API"])
    assert (env["_HANDLER"], env["LAMBDA_TASK_ROOT"], a1["cwd"]) == (
        "app.handler",
        code_dir,
        code_dir,
    )
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/AFunction"
    assert (env["AWS_EXECUTION_ENV"], env["TZ"]) == ("AWS_Lambda_python3.12", ":UTC")
    assert env["AWS_ACCESS_KEY_ID"] != b1["env"]["AWS_ACCESS_KEY_ID"]  # one per environment
    assert a1["layer"] == "from the layer"  # the layer is on the path, as /opt/python
    assert a1["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:AFunction"
    assert a1["request_id"] != a2["request_id"]
    assert 1000 < a1["remaining"] <= 2000  # from Lambda-Runtime-Deadline-Ms


def test_concurrent_invocations_cold_start_more_environments(runtime: ProcessRuntime) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: runtime.invoke("AFunction", {"sleep": 0.5}), range(2)))
    assert results[0][0]["pid"] != results[1][0]["pid"]
    assert runtime.cold_starts["AFunction"] == 2


def test_errors_have_lambda_shapes(runtime: ProcessRuntime) -> None:
    _, err = runtime.invoke("AFunction", {"fail": True})
    assert err is not None and err["errorType"] == "ValueError"
    assert err["errorMessage"] == "declined by test" and err["requestId"]
    assert any("app.py" in frame for frame in err["stackTrace"])
    _, err = runtime.invoke("AFunction", {"unserialisable": True})
    assert err is not None and err["errorType"] == "Runtime.MarshalError"
    _, err = runtime.invoke("MissingFunction", {})
    assert err is not None and err["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module_here" in err["errorMessage"]
    _, err = runtime.invoke("BrokenFunction", {})  # an exception at import: its own type
    assert err is not None and (err["errorType"], err["errorMessage"]) == (
        "RuntimeError",
        "init failed",
    )
    assert runtime.environments("BrokenFunction") == []
    with pytest.raises(UnknownFunctionError):
        runtime.invoke("Nope", {})


def test_a_dying_runtime_is_an_exit_error(runtime: ProcessRuntime) -> None:
    _, err = runtime.invoke("AFunction", {"exit": 3})
    assert err is not None and err["errorType"] == "Runtime.ExitError"
    assert re.fullmatch(
        r"RequestId: [0-9a-f-]{36} Error: Runtime exited with error: exit status 3",
        err["errorMessage"],
    )
    _, err = runtime.invoke("AFunction", {"die": True})
    assert err is not None and err["errorMessage"].endswith(
        "Error: Runtime exited with error: signal: killed"
    )
    ok, err = runtime.invoke("AFunction", {})
    assert err is None and ok["calls"] == 1  # a fresh environment each time


def test_timeout_ends_the_environment(
    runtime: ProcessRuntime, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = runtime.invoke("AFunction", {})
    _, err = runtime.invoke("AFunction", {"sleep": 5})  # the template's Timeout is 2 s
    assert err == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "Task timed out after 2.00 seconds",
    }
    assert not _alive(first["pid"])
    after, _ = runtime.invoke("AFunction", {})
    assert after["pid"] != first["pid"] and after["calls"] == 1  # a fresh environment
    assert _reports(runtime, capsys)[1].endswith("\tStatus: timeout")


def test_report_lines(runtime: ProcessRuntime, capsys: pytest.CaptureFixture[str]) -> None:
    first, _ = runtime.invoke("AFunction", {"sleep": 0.2})
    second, _ = runtime.invoke("AFunction", {})
    lines = _reports(runtime, capsys)
    assert len(lines) == 2
    pattern = (
        r"REPORT RequestId: (?P<id>\S+)\tDuration: (?P<d>[\d.]+) ms\t"
        r"Billed Duration: (?P<b>\d+) ms\tMemory Size: 128 MB\tMax Memory Used: (?P<m>\d+) MB"
        r"(\tInit Duration: (?P<i>[\d.]+) ms)?\tPost-Runtime Extensions Duration: [\d.]+ ms"
    )
    cold, warm = (re.fullmatch(pattern, line) for line in lines)
    assert cold is not None and warm is not None
    assert (cold["id"], warm["id"]) == (first["request_id"], second["request_id"])
    assert float(cold["d"]) >= 200 and int(cold["m"]) > 5
    assert cold["i"] is not None and warm["i"] is None  # Init Duration on the cold start only
    assert int(cold["b"]) == math.ceil(float(cold["d"]) + float(cold["i"]))  # INIT is billed
    assert int(warm["b"]) == math.ceil(float(warm["d"]))


def test_cap_queues_then_throttles(tpl: Path) -> None:
    rt = ProcessRuntime(
        load_template(tpl), prewarm=False, limits=Limits(max_environments=2, queue_timeout_s=5)
    )
    try:
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda _: rt.invoke("AFunction", {"sleep": 0.6}), range(4)))
        assert all(err is None for _, err in results)
        assert len({r["pid"] for r, _ in results}) == 2 and rt.cold_starts["AFunction"] == 2
        assert time.monotonic() - began >= 1.2  # two rounds of two
    finally:
        rt.close()
    tight = ProcessRuntime(
        load_template(tpl), prewarm=False, limits=Limits(max_environments=1, queue_timeout_s=0.3)
    )
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(tight.invoke, "AFunction", {"sleep": 1.5})
            time.sleep(0.8)  # the slow one holds the only environment
            with pytest.raises(TooManyRequestsError):
                tight.invoke("AFunction", {})
            assert slow.result()[1] is None
    finally:
        tight.close()


def test_reserved_concurrency_caps_the_function(runtime: ProcessRuntime) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: runtime.invoke("OneFunction", {"sleep": 0.3}), range(2)))
    assert results[0][0]["pid"] == results[1][0]["pid"]  # queued for the one environment
    with pytest.raises(TooManyRequestsError):
        runtime.invoke("OffFunction", {})  # reserved 0: throttled, as Lambda does


def test_cold_starts_are_bounded(tpl: Path) -> None:
    rt = ProcessRuntime(
        load_template(tpl), prewarm=False, limits=Limits(max_environments=3, max_cold_starts=1)
    )
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda _: rt.invoke("AFunction", {"sleep": 1.2}), range(3)))
        assert all(err is None for _, err in results), results  # within the 2 s Timeout
        windows = sorted(env.init_window for env in rt.environments("AFunction"))
        # On a loaded machine a queued invocation may find the first environment free
        # again before a third INIT would end: then it reuses it, as Lambda would.
        assert len(windows) >= 2
        for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
            assert start >= end  # one INIT at a time
    finally:
        rt.close()


def test_dead_idle_environment_is_replaced(runtime: ProcessRuntime) -> None:
    first, _ = runtime.invoke("AFunction", {})
    os.kill(first["pid"], signal.SIGKILL)
    # Dead (a zombie: the kill is asynchronous, on a loaded machine it can take a while),
    # and the next invocation comes at once, before any reaper could run: never handed to it.
    deadline = time.monotonic() + 20
    while _alive(first["pid"]):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    after, err = runtime.invoke("AFunction", {})
    assert err is None and after["pid"] != first["pid"]
    _wait_until_all_alive(runtime)
    second = runtime.invoke("AFunction", {})[0]
    os.kill(second["pid"], signal.SIGKILL)
    _wait_until_all_alive(runtime)  # the reaper drops it while it is idle
    assert runtime.invoke("AFunction", {})[1] is None


def _wait_until_all_alive(runtime: ProcessRuntime) -> None:
    deadline = time.monotonic() + 20  # generous: a loaded 2-core machine, not a benchmark
    while any(not env.alive() for env in runtime.environments("AFunction")):
        assert time.monotonic() < deadline, "a dead environment stayed in the pool"
        time.sleep(0.05)


def test_close_ends_every_process(tpl: Path) -> None:
    rt = ProcessRuntime(load_template(tpl), prewarm=False)
    pids = [rt.invoke(name, {})[0]["pid"] for name in ("AFunction", "BFunction")]
    rt.close()
    assert not any(_alive(pid) for pid in pids)


def test_internal_extension_runs_after_the_response(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "template.yaml").write_text(f"""\
Resources:
  ExtFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: {FIXTURES / "internal_extension"}
      Handler: app.handler
      Timeout: 5
      Environment: {{Variables: {{POST_INVOKE_SECONDS: "0.8"}}}}
""")
    rt = ProcessRuntime(
        load_template(tmp_path / "template.yaml"),
        prewarm=False,
        limits=Limits(max_environments=1),
    )
    try:
        first, err = rt.invoke("ExtFunction", {})
        answered = time.monotonic()
        assert err is None, err
        assert first["shutdown_refused"] == [403, "Extension.InvalidEventType"]
        assert first["registered"]["functionName"] == "ExtFunction"
        (env,) = rt.environments("ExtFunction")
        assert not env.sandbox.idle()  # answered, but the extension is still at work
        second, _ = rt.invoke("ExtFunction", {})
        assert time.monotonic() - answered >= 0.7  # the next invocation waited for it
        assert first["request_id"] in second["seen"] and first["request_id"] in second["done"]
    finally:
        rt.close()
    reports = [line for line in capsys.readouterr().err.splitlines() if line.startswith("REPORT")]
    post = re.search(r"Post-Runtime Extensions Duration: ([\d.]+) ms", reports[0])
    assert post is not None and 700 <= float(post.group(1)) < 3000


def test_external_extension_gets_invoke_and_shutdown(tmp_path: Path, tpl: Path) -> None:
    log = tmp_path / "events.jsonl"
    script = tpl.parent / "layer" / "extensions" / "probe"
    script.parent.mkdir()
    script.write_text(f"""#!{sys.executable}
import json, os, urllib.request
base = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2020-01-01/extension"
req = urllib.request.Request(base + "/register", method="POST",
    data=json.dumps({{"events": ["INVOKE", "SHUTDOWN"]}}).encode(),
    headers={{"Lambda-Extension-Name": "probe"}})
ext = urllib.request.urlopen(req).headers["Lambda-Extension-Identifier"]
while True:
    headers = {{"Lambda-Extension-Identifier": ext}}
    nxt = urllib.request.Request(base + "/event/next", headers=headers)
    event = json.loads(urllib.request.urlopen(nxt).read())
    with open({str(log)!r}, "a") as out:
        out.write(json.dumps(event) + "\\n")
    if event["eventType"] == "SHUTDOWN":
        break
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    rt = ProcessRuntime(load_template(tpl), prewarm=False)
    try:
        result, err = rt.invoke("AFunction", {})
        assert err is None
    finally:
        rt.close()
    events: list[dict[str, Any]] = [json.loads(x) for x in log.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["INVOKE", "SHUTDOWN"]
    assert events[0]["requestId"] == result["request_id"]
    assert events[1]["shutdownReason"] == "spindown"


# --- function faults ----------------------------------------------------------------------


def test_crash_before_kills_before_the_handler(runtime: ProcessRuntime, tmp_path: Path) -> None:
    warm, _ = runtime.invoke("AFunction", {})
    FAULTS.add({"function": "AFunction", "action": "crash_before"})
    marker = tmp_path / "ran"
    _, err = runtime.invoke("AFunction", {"touch": str(marker)})
    assert err is not None and err["errorType"] == "Runtime.ExitError"
    assert err["errorMessage"].endswith("Error: Runtime exited with error: signal: killed")
    assert not marker.exists()  # the handler never ran
    assert not _alive(warm["pid"])
    after, err = runtime.invoke("AFunction", {"touch": str(marker)})  # count 1: spent
    assert err is None and after["pid"] != warm["pid"] and marker.exists()
    assert FAULTS.snapshot()[0]["fired"] == 1


def test_crash_after_runs_the_handler_then_kills(runtime: ProcessRuntime, tmp_path: Path) -> None:
    FAULTS.add({"function": "AFunction", "action": "crash_after", "step": "Charge"})
    marker = tmp_path / "ran"
    ok, err = runtime.invoke("AFunction", {"step": "Other"})  # another step: not affected
    assert err is None
    _, err = runtime.invoke("AFunction", {"step": "Charge", "touch": str(marker)})
    assert err is not None and err["errorType"] == "Runtime.ExitError"
    request_id = marker.read_text().strip()  # its side effect happened...
    assert err["errorMessage"] == (
        f"RequestId: {request_id} Error: Runtime exited with error: signal: killed"
    )  # ...and its answer was never delivered
    assert not _alive(ok["pid"])


def test_delay_counts_toward_the_timeout(runtime: ProcessRuntime) -> None:
    FAULTS.add({"function": "AFunction", "action": "delay", "delay_ms": 400})
    began = time.monotonic()
    late, err = runtime.invoke("AFunction", {})
    assert err is None and time.monotonic() - began >= 0.4
    assert late["remaining"] < 1650  # the delay came out of the 2 s budget
    FAULTS.add({"function": "AFunction", "action": "delay", "delay_ms": 3000})
    _, err = runtime.invoke("AFunction", {})
    assert err is not None and err["errorType"] == "Sandbox.Timedout"


def test_idle_environments_are_shut_down(tpl: Path) -> None:
    rt = ProcessRuntime(load_template(tpl), prewarm=False, limits=Limits(idle_timeout_s=0.5))
    try:
        first, _ = rt.invoke("AFunction", {})
        deadline = time.monotonic() + 5
        while _alive(first["pid"]):  # spun down after half a second without work
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert rt.environments("AFunction") == []
        again, err = rt.invoke("AFunction", {})
        assert err is None and again["calls"] == 1 and rt.cold_starts["AFunction"] == 2
    finally:
        rt.close()
