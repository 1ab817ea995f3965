"""The local AWS: moto's server app plus what moto lacks for this platform.

A WSGI middleware in front of moto
  (a) serialises DynamoDB requests with one lock: moto takes no lock around a request,
      so concurrent conditional writes would race; AWS evaluates them atomically;
  (b) answers Lambda Invoke from the stack's runtime (moto's Lambda needs Docker): the
      in-process LambdaRuntime or the process-per-environment ProcessRuntime;
  (c) implements StartSyncExecution (moto's server does not route it) by running moto's own
      ASL interpreter inline;
  (d) fires AWS-call faults (local.faults): the calling execution environment is the one
      whose access key signed the request (each environment has its own);
  (e) frees, at most once a second, what moto keeps for no one (local.moto_patches).
moto's interpreter calls Lambda with boto3 at http://127.0.0.1:$MOTO_PORT, so the Invoke
comes back through (b). moto keeps state in process-global backends: run one emulator per
process at a time (start resets every backend).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import boto3
from moto.core.config import default_user_config
from moto.moto_api._internal.models import moto_api_backend
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.stepfunctions.parser.api import StateMachineType
from moto.stepfunctions.parser.backend.execution import SyncExecution
from moto.stepfunctions.responses import get_backend
from werkzeug.serving import BaseWSGIServer, make_server

from local import moto_patches
from local.faults import CALLERS, FAULTS, AwsCall, Caller, Fault
from local.runtime import LambdaRuntime, TooManyRequestsError, UnknownFunctionError
from local.template import ACCOUNT, REGION, Template, load_template

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

KEEP_EXECUTIONS = 100  # per state machine, newest kept (~30 KB each); AWS lists no Express ones
_INVOKE = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
# moto accepts any credentials; these mark the traffic as local.
_FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
DEMO_KEY, DEMO_SECRET, DEMO_MERCHANT = "mk_demo", "sk_demo_secret", "merch_demo"


class QuietHandler(MotoRequestHandler):
    """Keeps underscore headers (as moto's server does) without a log line per request."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return


def check_port_free(port: int) -> None:
    """Raise OSError(EADDRINUSE) if 127.0.0.1:port is taken.

    werkzeug's make_server prints to stderr and calls sys.exit(1) on a taken port; probing
    first (with SO_REUSEADDR, as the server binds) lets callers report it in one line.
    """
    if port == 0:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def serve_wsgi(
    app: WsgiApp, port: int, handler: type[QuietHandler] = QuietHandler
) -> tuple[BaseWSGIServer, threading.Thread]:
    """Serve on 127.0.0.1 only, one thread per request, from a daemon thread."""
    check_port_free(port)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def _json_response(
    start_response: StartResponse,
    status: str,
    body: Any,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(body, default=_json_default).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            *(headers or []),
        ],
    )
    return [data]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.timestamp()  # awsJson timestamps are epoch seconds
    return str(value)


def _read_body(environ: Environ) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return bytes(environ["wsgi.input"].read(length)) if length else b""


class AwsMiddleware:
    def __init__(self, moto_app: WsgiApp, runtime: LambdaRuntime | Any) -> None:
        self.moto_app = moto_app
        self.runtime = runtime
        self.dynamodb_lock = threading.Lock()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        moto_patches.housekeeping()  # at most once a second: what moto would keep forever
        hit = aws_call_fault(environ) if FAULTS else None
        if hit is None:
            return self._route(environ, start_response)
        caller, fault = hit
        if fault.action == "delay":
            time.sleep(fault.delay_ms / 1000)
            return self._route(environ, start_response)
        if fault.action == "crash_before":
            caller.crash()  # the call is never performed
            err = {"__type": "ServiceUnavailable", "message": "caller was killed by a fault"}
            return _json_response(start_response, "503 Service Unavailable", err)
        body = b"".join(self._route(environ, start_response))  # performed...
        caller.crash()  # ...and the caller dies before the answer reaches it
        return [body]

    def _route(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        match = _INVOKE.match(environ.get("PATH_INFO", ""))
        if match and environ.get("REQUEST_METHOD") == "POST":
            return self._invoke(unquote(match.group(1)), environ, start_response)
        if target == "AWSStepFunctions.StartSyncExecution":
            return self._start_sync(environ, start_response)
        if target.startswith("DynamoDB_"):
            with self.dynamodb_lock:
                # Drain the body inside the lock: the write happens while iterating.
                return [b"".join(self.moto_app(environ, start_response))]
        return self.moto_app(environ, start_response)

    def _invoke(self, name: str, environ: Environ, start_response: StartResponse) -> list[bytes]:
        raw = _read_body(environ)
        kind = environ.get("HTTP_X_AMZ_INVOCATION_TYPE", "RequestResponse")
        try:
            self.runtime.function(name)
            payload = json.loads(raw or b"{}")
        except UnknownFunctionError:
            err = {"Type": "User", "message": f"Function not found: {name}"}
            hdr = [("x-amzn-ErrorType", "ResourceNotFoundException")]
            return _json_response(start_response, "404 Not Found", err, hdr)
        except ValueError:
            err = {"Type": "User", "message": "Could not parse request body into json"}
            hdr = [("x-amzn-ErrorType", "InvalidRequestContentException")]
            return _json_response(start_response, "400 Bad Request", err, hdr)
        if kind == "DryRun":
            start_response("204 No Content", [])
            return []
        if kind == "Event":  # asynchronous: accept now, run in the background
            threading.Thread(target=self._invoke_async, args=(name, payload), daemon=True).start()
            start_response("202 Accepted", [("Content-Length", "0")])
            return []
        try:
            result, error = self.runtime.invoke(name, payload)
        except TooManyRequestsError:
            err = {
                "Type": "User",
                "message": "Rate Exceeded.",
                "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
            }
            hdr = [("x-amzn-ErrorType", "TooManyRequestsException")]
            return _json_response(start_response, "429 Too Many Requests", err, hdr)
        headers = [("X-Amz-Executed-Version", "$LATEST")]
        if error is not None:
            headers.append(("X-Amz-Function-Error", "Unhandled"))
            return _json_response(start_response, "200 OK", error, headers)
        return _json_response(start_response, "200 OK", result, headers)

    def _invoke_async(self, name: str, payload: Any) -> None:
        # Lambda's async queue retries throttles; locally a throttled event is dropped.
        with contextlib.suppress(TooManyRequestsError):
            self.runtime.invoke(name, payload)

    def _start_sync(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            req = json.loads(_read_body(environ) or b"{}")
            output = start_sync_execution(
                req["stateMachineArn"], req.get("input"), req.get("name"), req.get("traceHeader")
            )
        except TypeError as exc:  # AWS allows StartSyncExecution on EXPRESS only
            err = {"__type": "StateMachineTypeNotSupported", "message": str(exc)}
            return _json_response(start_response, "400 Bad Request", err)
        except LookupError as exc:
            err = {"__type": "StateMachineDoesNotExist", "message": str(exc)}
            return _json_response(start_response, "400 Bad Request", err)
        except ValueError as exc:
            err = {"__type": "InvalidExecutionInput", "message": str(exc)}
            return _json_response(start_response, "400 Bad Request", err)
        return _json_response(start_response, "200 OK", output)


_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/[^/]+/([^/]+)/aws4_request")


def aws_call_of(environ: Environ) -> tuple[str, AwsCall] | None:
    """(access key id, call) of a SigV4-signed request: who calls what."""
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match is None:
        return None
    access_key, service = match.groups()
    prefix, _, operation = environ.get("HTTP_X_AMZ_TARGET", "").partition(".")
    if not operation and _INVOKE.match(environ.get("PATH_INFO", "")):
        operation = "Invoke"  # Lambda's REST API has no X-Amz-Target
    if not operation:
        operation = dict(parse_qsl(environ.get("QUERY_STRING", ""))).get("Action", "")
    return access_key, AwsCall(service, prefix, operation)


def aws_call_fault(environ: Environ) -> tuple[Caller, Fault] | None:
    """The environment making this AWS call and the fault that fires for it, if any."""
    found = aws_call_of(environ)
    caller = CALLERS.get(found[0]) if found else None
    if found is None or caller is None:
        return None
    raw = _read_body(environ)
    environ["wsgi.input"] = io.BytesIO(raw)  # moto reads it again
    environ["CONTENT_LENGTH"] = str(len(raw))
    texts = (caller.current_payload(), raw.decode("utf-8", "replace"))
    fault = FAULTS.for_aws_call(caller.function, found[1], texts)
    return None if fault is None else (caller, fault)


def start_sync_execution(
    sm_arn: str, input_json: str | None, name: str | None, trace_header: str | None = None
) -> dict[str, Any]:
    """Run an Express execution to completion in this thread with moto's interpreter."""
    backend = get_backend(ACCOUNT, REGION)
    sm: Any = next((s for s in backend.state_machines if s.arn == sm_arn), None)
    if sm is None:
        raise LookupError(f"State Machine Does Not Exist: '{sm_arn}'")
    # moto keeps the real type in .type (its .sm_type is always "STANDARD").
    if str(sm.type).upper() != "EXPRESS":
        raise TypeError("This operation is not supported by this type of state machine")
    input_data = input_json if input_json is not None else "{}"
    json.loads(input_data)  # ValueError → InvalidExecutionInput, as AWS
    exec_name = name or uuid.uuid4().hex
    # Snapshot the definition as moto's start_execution does (executions hold threads).
    clone = copy.deepcopy(sm, {id(sm.executions): [], id(sm.backend): sm.backend})
    execution = SyncExecution(
        name=exec_name,
        sm_type=StateMachineType.EXPRESS,
        role_arn=clone.roleArn,
        exec_arn=f"arn:aws:states:{REGION}:{ACCOUNT}:express:{sm.name}:{exec_name}:{uuid.uuid4()}",
        account_id=ACCOUNT,
        region_name=REGION,
        state_machine=clone,
        start_date=datetime.datetime.now(tz=datetime.UTC),
        cloud_watch_logging_session=None,
        input_data=input_data,
        trace_header=trace_header,
        activity_store={},
    )
    sm.executions.append(execution)  # visible to DescribeExecution/ListExecutions
    del sm.executions[:-KEEP_EXECUTIONS]  # each holds its whole program state: bound memory
    began = time.monotonic()
    execution.start()  # SyncExecutionWorker runs the program inline
    out: dict[str, Any] = dict(execution.to_start_sync_execution_output())
    out.pop("inputDetails", None)
    out.pop("outputDetails", None)
    out.pop("traceHeader", None)
    out["status"] = str(getattr(out["status"], "value", out["status"]))
    elapsed_ms = int((time.monotonic() - began) * 1000)
    out["billingDetails"] = {"billedMemoryUsedInMB": 64, "billedDurationInMilliseconds": elapsed_ms}
    return out


@dataclass
class EmulatorHandle:
    url: str
    port: int
    env: dict[str, str]
    runtime: LambdaRuntime
    template: Template
    tables: dict[str, str]  # logical id → table name
    state_machine_arn: str | None
    merchant_key: str
    merchant_secret: str
    merchant_id: str = DEMO_MERCHANT
    _server: BaseWSGIServer | None = None
    _thread: threading.Thread | None = None
    _saved_env: dict[str, str | None] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        factory: Any = boto3.client  # service is a plain str, not one of the stub literals
        return factory(service, endpoint_url=self.url, region_name=REGION, **_FAKE_CREDENTIALS)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        close = getattr(self.runtime, "close", None)
        if callable(close):
            close()  # ends the execution-environment processes of an isolated runtime
        for key, old in self._saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def aws_env(port: int) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "MOTO_PORT": str(port),  # where moto's interpreter sends its Lambda calls
        # StartSyncExecution's endpoint has host prefix "sync-": sync-127.0.0.1 resolves nowhere.
        "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
    }


def _provision(handle: EmulatorHandle) -> None:
    ddb = handle.client("dynamodb")
    for table in handle.template.tables.values():
        kwargs: dict[str, Any] = {
            "TableName": table.name,
            "KeySchema": table.key_schema,
            "AttributeDefinitions": table.attribute_definitions,
            "BillingMode": "PAY_PER_REQUEST",
        }
        if table.global_indexes:
            kwargs["GlobalSecondaryIndexes"] = [
                {k: v for k, v in gsi.items() if k != "ProvisionedThroughput"}
                for gsi in table.global_indexes
            ]
        ddb.create_table(**kwargs)
        if table.ttl_attribute:
            ddb.update_time_to_live(
                TableName=table.name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
            )
    sfn = handle.client("stepfunctions")
    for sm in handle.template.state_machines.values():
        sfn.create_state_machine(
            name=sm.name,
            definition=sm.definition(),
            type=sm.type,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/{sm.name}-role",
        )
    _seed_merchant(handle)


def _seed_merchant(handle: EmulatorHandle) -> None:
    table = next((t for t in handle.template.tables.values() if "payment" in t.name.lower()), None)
    table = table or next(iter(handle.template.tables.values()), None)
    if table is None:
        return
    item = {
        "pk": f"APIKEY#{handle.merchant_key}",
        "sk": "APIKEY",
        "merchant_id": handle.merchant_id,
        "secret": handle.merchant_secret,
        "key_id": handle.merchant_key,
        "status": "active",
    }
    handle.client("dynamodb").put_item(
        TableName=table.name, Item={k: {"S": v} for k, v in item.items()}
    )


def start_emulator(
    template_path: str = "template.yaml",
    port: int = 0,
    env_overrides: Mapping[str, str] | None = None,
    runtime: Any = None,
    *,
    isolated: bool = False,
) -> EmulatorHandle:
    """Serve the local AWS on 127.0.0.1 and provision it from the template.

    Sets the AWS_* variables (endpoint, fake credentials, region) in this process and
    restores them on stop(). Functions run in-process (`LambdaRuntime`, for tests) or, with
    `isolated`, one process per execution environment (`ProcessRuntime`, for `make run`).
    `runtime` replaces both (tests use a fake).
    """
    moto_patches.apply()  # bounded memory and O(1) transactions (see local.moto_patches)
    moto_api_backend.reset()  # moto state is process-global
    FAULTS.clear()  # so is the fault table: a new stack starts without faults
    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    overrides = dict(env_overrides or {})
    template = load_template(template_path, overrides)
    moto_app = DomainDispatcherApplication(create_backend_app)
    middleware = AwsMiddleware(moto_app, runtime)
    server, thread = serve_wsgi(middleware, port)
    real_port = server.server_port
    env = aws_env(real_port)
    fn_keys = {k for fn in template.functions.values() for k in fn.environment}
    saved = {k: os.environ.get(k) for k in {*env, *fn_keys, *overrides}}
    os.environ.update(env)
    if runtime is None and isolated:
        from local.workers import ProcessRuntime

        runtime = ProcessRuntime(template, {**env, **overrides})
        middleware.runtime = runtime
    elif runtime is None:
        runtime = LambdaRuntime(template, {**env, **overrides})  # applies the functions' env
        middleware.runtime = runtime
    env.update(getattr(runtime, "env", {}))
    sm = template.state_machine
    handle = EmulatorHandle(
        url=f"http://127.0.0.1:{real_port}",
        port=real_port,
        env=env,
        runtime=runtime,
        template=template,
        tables={t.logical_id: t.name for t in template.tables.values()},
        state_machine_arn=sm.arn if sm else None,
        merchant_key=os.environ.get("LOCAL_MERCHANT_KEY", DEMO_KEY),
        merchant_secret=os.environ.get("LOCAL_MERCHANT_SECRET", DEMO_SECRET),
        _server=server,
        _thread=thread,
        _saved_env=saved,
    )
    try:
        _provision(handle)
    except Exception:
        handle.stop()
        raise
    return handle
