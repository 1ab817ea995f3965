"""The SAM template: lint, validate, and the contract it keeps (SPEC §1-§2, least privilege)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
VENV_BIN = Path(sys.executable).parent

FUNCTIONS = {
    "CreatePaymentFunction": ("functions/create_payment/", "payment-gateway"),
    "RefundFunction": ("functions/refund/", "refund-service"),
    "RiskCheckFunction": ("functions/risk_check/", "risk-service"),
    "OrderFunction": ("functions/order/", "order-service"),
    "ChannelFunction": ("functions/channel/", "channel-adapter"),
    "WebhookFunction": ("functions/webhooks/", "webhook-service"),
    "ReconcilerFunction": ("functions/reconciler/", "reconciler"),
}

# SPEC §2: every merchant route and the function that serves it.
ROUTES = {
    ("POST", "/api/v1/payments"): "CreatePaymentFunction",
    ("GET", "/api/v1/payments"): "CreatePaymentFunction",
    ("GET", "/api/v1/payments/{payment_no}"): "CreatePaymentFunction",
    ("GET", "/api/v1/orders/{order_no}"): "CreatePaymentFunction",
    ("GET", "/health"): "CreatePaymentFunction",
    ("POST", "/api/v1/payments/{payment_no}/refunds"): "RefundFunction",
    ("POST", "/webhooks/stripe"): "WebhookFunction",
}


def _tool(name: str) -> str:
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else str(ROOT / ".venv" / "bin" / name)


def _plain(node: Any) -> Any:
    """cfn-lint's decoded nodes (dict_node, str_node, ...) as plain JSON types."""
    return json.loads(json.dumps(node, default=str))


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = decode_str(TEMPLATE.read_text(encoding="utf-8"))
    assert not matches, matches
    return dict(_plain(decoded))


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return dict(template["Resources"])


@pytest.fixture(scope="module")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    """The template after the SAM transform (policy templates expanded into IAM roles)."""
    from samtranslator.translator.transform import transform

    class _NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    doc = json.loads(json.dumps(template))
    for resource in doc["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):
            if isinstance(props.get(key), str):
                props[key] = "s3://bucket/key"
    old = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = old or "us-east-1"
    try:
        return dict(transform(doc, {}, _NoManagedPolicies()))
    finally:
        if old is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def _env(resources: dict[str, Any], template: dict[str, Any], fn: str) -> dict[str, Any]:
    merged = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    merged.update(resources[fn]["Properties"].get("Environment", {}).get("Variables", {}))
    return merged


# --- tools ---------------------------------------------------------------------------------


def test_cfn_lint_passes() -> None:
    result = subprocess.run(
        [_tool("cfn-lint"), str(TEMPLATE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"cfn-lint failed:\n{result.stdout}\n{result.stderr}"


def test_sam_validate_lint_passes(tmp_path: Path) -> None:
    # A private SAM config dir with a fresh version-check stamp: no PyPI call, no telemetry.
    (tmp_path / "metadata.json").write_text(
        json.dumps({"telemetryEnabled": False, "lastVersionCheck": time.time()}),
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "SAM_CLI_TELEMETRY": "0",
        "AWS_DEFAULT_REGION": "us-east-1",
        "__SAM_CLI_APP_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [_tool("sam"), "validate", "--lint", "--template-file", str(TEMPLATE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"sam validate --lint failed:\n{output}"
    assert "is a valid SAM Template" in output


def test_samconfig_has_default_and_prod() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    assert config["version"] == 0.1
    assert config["default"]["validate"]["parameters"]["lint"] is True
    default = config["default"]["deploy"]["parameters"]
    prod = config["prod"]["deploy"]["parameters"]
    assert config["default"]["global"]["parameters"]["stack_name"]
    assert (
        config["prod"]["global"]["parameters"]["stack_name"]
        != config["default"]["global"]["parameters"]["stack_name"]
    )
    for deploy in (default, prod):
        assert deploy["capabilities"] == "CAPABILITY_IAM"
        assert deploy["resolve_s3"] is True
        assert deploy["region"]
    assert "Environment=default" in default["parameter_overrides"]
    for setting in ("Environment=prod", "LogRetentionDays=90", "OtelTracesSamplerArg=0.1"):
        assert setting in prod["parameter_overrides"]


# --- functions ----------------------------------------------------------------------------


def test_globals_runtime_architecture_tracing(template: dict[str, Any]) -> None:
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.12"
    assert glob["Architectures"] == ["arm64"]
    assert glob["Tracing"] == "Active"
    assert glob["MemorySize"] == 256
    assert glob["Layers"] == [{"Ref": "CommonLayer"}]
    assert glob["LoggingConfig"]["LogFormat"] == "JSON"


def test_functions_code_handler_and_service_names(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    functions = _of_type(resources, "AWS::Serverless::Function")
    assert set(functions) == set(FUNCTIONS)
    for name, (code_uri, service) in FUNCTIONS.items():
        props = functions[name]["Properties"]
        assert props["CodeUri"] == code_uri
        assert (ROOT / code_uri).is_dir()
        assert props.get("Handler", template["Globals"]["Function"].get("Handler")) == "app.handler"
        assert props.get("Runtime", "python3.12") == "python3.12"
        assert props.get("Architectures", ["arm64"]) == ["arm64"]
        env = _env(resources, template, name)
        assert env["POWERTOOLS_SERVICE_NAME"] == service
        assert env["PAYMENTS_TABLE"] == {"Ref": "PaymentsTable"}
        assert env["IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        for var in (
            "METRICS_NAMESPACE",
            "PROMETHEUS_REMOTE_WRITE_URL",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_TRACES_SAMPLER_ARG",
            "STRIPE_API_BASE",
        ):
            assert isinstance(env[var], dict) and "Ref" in env[var], var
    # API functions keep the 29 s budget, workflow tasks are 20 s (below the ASL's 25 s).
    for name in ("CreatePaymentFunction", "RefundFunction"):
        timeout = resources[name]["Properties"].get("Timeout")
        assert (timeout or template["Globals"]["Function"]["Timeout"]) == 29
    for name in ("RiskCheckFunction", "OrderFunction", "ChannelFunction", "WebhookFunction"):
        assert resources[name]["Properties"]["Timeout"] == 20


def test_environment_variables_where_needed(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    secret = re.compile(
        r"^\{\{resolve:secretsmanager:\$\{StripeSecretName\}:SecretString:api_key\}\}$"
    )
    for name in FUNCTIONS:
        env = _env(resources, template, name)
        if name in ("ChannelFunction", "RefundFunction", "WebhookFunction", "ReconcilerFunction"):
            assert secret.match(env["STRIPE_API_KEY"]["Fn::Sub"]), name
        else:
            assert "STRIPE_API_KEY" not in env, name
        risk_vars = {"RISK_BLOCKED_COUNTRIES", "RISK_REVIEW_AMOUNT_MINOR", "RISK_VELOCITY_LIMIT"}
        assert risk_vars <= set(env) if name == "RiskCheckFunction" else not risk_vars & set(env)
    create_env = _env(resources, template, "CreatePaymentFunction")
    assert create_env["STATE_MACHINE_ARN"] == {"Ref": "PaymentWorkflow"}
    params = template["Parameters"]
    assert params["MetricsNamespace"]["Default"] == "PaymentGateway"
    assert params["PrometheusRemoteWriteUrl"]["Default"] == ""
    assert params["OtelExporterOtlpEndpoint"]["Default"] == ""
    assert params["OtelTracesSamplerArg"]["Default"] == "1.0"
    assert params["StripeApiBase"]["Default"] == "https://api.stripe.com"
    assert params["Environment"]["AllowedValues"] == ["default", "prod"]


def test_common_layer(resources: dict[str, Any]) -> None:
    layer = resources["CommonLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"] == "layers/common/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    # Built by sam/Makefile: pinned wheels plus unchecked-hash .pyc (test_sam_build checks).
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert (ROOT / "layers/common/requirements.txt").is_file()
    assert (ROOT / "layers/common/payments").is_dir()


def test_every_function_is_built_to_unchecked_hash_pyc(resources: dict[str, Any]) -> None:
    """sam/Makefile compiles each function's sources at build time (SAM's python builder
    ships sources only, which Lambda's read-only file system compiles on every cold start);
    test_sam_build checks the artifacts."""
    functions = _of_type(resources, "AWS::Serverless::Function")
    assert len(functions) == 7
    for name, fn in functions.items():
        assert fn.get("Metadata", {}).get("BuildMethod") == "makefile", name
        assert fn["Metadata"].get("ContextPath") == "sam", name


# --- API -----------------------------------------------------------------------------------


def test_every_spec_route_maps_to_its_function(resources: dict[str, Any]) -> None:
    routes: dict[tuple[str, str], str] = {}
    for name, fn in _of_type(resources, "AWS::Serverless::Function").items():
        for event in fn["Properties"].get("Events", {}).values():
            if name == "ReconcilerFunction":
                assert event["Type"] == "ScheduleV2"
                continue
            assert event["Type"] == "HttpApi", name
            props = event["Properties"]
            assert props["ApiId"] == {"Ref": "PaymentsApi"}
            assert props["PayloadFormatVersion"] == "2.0"
            key = (props["Method"].upper(), props["Path"])
            assert key not in routes, f"route {key} defined twice"
            routes[key] = name
    for route, function in ROUTES.items():
        assert routes.get(route) == function, route
    # Anything else may only be the gateway's catch-all (JSON 404/405 from the handler).
    extra = {route: fn for route, fn in routes.items() if route not in ROUTES}
    assert extra in ({}, {("ANY", "$default"): "CreatePaymentFunction"})


def test_http_api_access_logs_and_throttling(resources: dict[str, Any]) -> None:
    apis = _of_type(resources, "AWS::Serverless::HttpApi")
    assert set(apis) == {"PaymentsApi"}
    props = apis["PaymentsApi"]["Properties"]
    assert props.get("StageName", "$default") == "$default"
    throttling = props["DefaultRouteSettings"]
    assert throttling["ThrottlingRateLimit"] and throttling["ThrottlingBurstLimit"]
    log_group = props["AccessLogSettings"]["DestinationArn"]["Fn::GetAtt"][0]
    assert resources[log_group]["Type"] == "AWS::Logs::LogGroup"
    fmt = props["AccessLogSettings"]["Format"]
    json.loads(fmt)  # one JSON object per request
    assert "header" not in fmt.lower() and "body" not in fmt.lower()


# --- workflow ------------------------------------------------------------------------------


def test_state_machine_is_express_with_all_substitutions(resources: dict[str, Any]) -> None:
    machines = _of_type(resources, "AWS::Serverless::StateMachine")
    assert set(machines) == {"PaymentWorkflow"}
    props = machines["PaymentWorkflow"]["Properties"]
    assert props["Type"] == "EXPRESS"
    asl_path = ROOT / props["DefinitionUri"]
    assert asl_path.is_file()
    asl_text = asl_path.read_text(encoding="utf-8")
    json.loads(asl_text)
    placeholders = set(re.findall(r"\$\{(\w+)\}", asl_text))
    substitutions = props["DefinitionSubstitutions"]
    assert placeholders <= set(substitutions), placeholders - set(substitutions)
    for key, function in (
        ("RiskCheckFunctionArn", "RiskCheckFunction"),
        ("OrderFunctionArn", "OrderFunction"),
        ("ChannelFunctionArn", "ChannelFunction"),
    ):
        assert substitutions[key] == {"Fn::GetAtt": [function, "Arn"]}
    assert props["Tracing"]["Enabled"] is True
    logging = props["Logging"]
    assert logging["Level"] in ("ALL", "ERROR")
    assert logging["IncludeExecutionData"] is False  # payment tokens must not reach logs
    group = logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert resources[group]["Type"] == "AWS::Logs::LogGroup"
    invoked = {
        p["LambdaInvokePolicy"]["FunctionName"]["Ref"]
        for p in props["Policies"]
        if "LambdaInvokePolicy" in p
    }
    assert invoked == {"RiskCheckFunction", "OrderFunction", "ChannelFunction"}


# --- storage -------------------------------------------------------------------------------


def test_tables_keys_ttl_pitr_sse(resources: dict[str, Any]) -> None:
    tables = _of_type(resources, "AWS::DynamoDB::Table")
    assert set(tables) == {"PaymentsTable", "IdempotencyTable"}
    expected = {
        "PaymentsTable": ([("pk", "HASH"), ("sk", "RANGE")], "ttl"),
        "IdempotencyTable": ([("id", "HASH")], "expiration"),
    }
    for name, (keys, ttl) in expected.items():
        props = tables[name]["Properties"]
        assert [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]] == keys
        types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
        assert all(types[k] == "S" for k, _ in keys)
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert props["SSESpecification"]["SSEEnabled"] is True
        assert props["DeletionProtectionEnabled"] == {"Fn::If": ["IsProd", True, False]}


# --- least privilege -----------------------------------------------------------------------


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for policy in role["Properties"].get("Policies", []):
        out.extend(policy["PolicyDocument"]["Statement"])
    return out


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement.get("Action", [])
    return [actions] if isinstance(actions, str) else list(actions)


def _resources(statement: dict[str, Any]) -> list[Any]:
    found = statement.get("Resource", [])
    return found if isinstance(found, list) else [found]


def test_no_wildcard_resource_on_data_or_workflow_actions(transformed: dict[str, Any]) -> None:
    roles = {
        name: r for name, r in transformed["Resources"].items() if r["Type"] == "AWS::IAM::Role"
    }
    managed = {
        name: r
        for name, r in transformed["Resources"].items()
        if r["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy")
    }
    statements = [s for role in roles.values() for s in _statements(role)]
    statements += [
        s for p in managed.values() for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert statements
    for statement in statements:
        sensitive = [
            a for a in _actions(statement) if a.split(":")[0] in ("dynamodb", "states", "lambda")
        ]
        if sensitive:
            assert "*" not in _resources(statement), statement
            assert not any(a.endswith(":*") or a == "*" for a in sensitive), statement


def _table_access(role: dict[str, Any]) -> dict[str, set[str]]:
    """Table logical id -> DynamoDB actions the role may perform on it."""
    access: dict[str, set[str]] = {}
    for statement in _statements(role):
        actions = {a for a in _actions(statement) if a.startswith("dynamodb:")}
        for resource in _resources(statement):
            text = json.dumps(resource)
            for table in ("PaymentsTable", "IdempotencyTable"):
                if f'"Ref": "{table}"' in text:
                    access.setdefault(table, set()).update(actions)
    return access


def test_function_permissions_are_scoped(transformed: dict[str, Any]) -> None:
    res = transformed["Resources"]
    writes = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
    expected_tables = {
        "CreatePaymentFunction": {"PaymentsTable", "IdempotencyTable"},
        "RefundFunction": {"PaymentsTable", "IdempotencyTable"},
        "RiskCheckFunction": {"PaymentsTable"},
        "OrderFunction": {"PaymentsTable"},
    }
    for fn, tables in expected_tables.items():
        access = _table_access(res[f"{fn}Role"])
        assert set(access) == tables, fn
        assert all(writes <= actions for actions in access.values()), fn
    channel = _table_access(res["ChannelFunctionRole"])
    assert set(channel) <= {"PaymentsTable"}
    assert not any(actions & writes for actions in channel.values())

    def starts_workflow(fn: str) -> bool:
        return any(
            "states:StartSyncExecution" in _actions(s)
            and _resources(s) == [{"Ref": "PaymentWorkflow"}]
            for s in _statements(res[f"{fn}Role"])
        )

    assert starts_workflow("CreatePaymentFunction")
    assert not any(starts_workflow(fn) for fn in FUNCTIONS if fn != "CreatePaymentFunction")


def test_series_slots_are_on_with_remote_write_and_scoped_to_their_items(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["PROMETHEUS_INSTANCE_SLOTS"] == {"Ref": "PrometheusInstanceSlots"}
    assert template["Parameters"]["PrometheusInstanceSlots"]["Default"] > 0
    policy = resources["SeriesSlotPolicy"]
    assert policy["Condition"] == "HasRemoteWrite"
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Condition"] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["OBS#SLOTS#*"]}
    }
    conditional = {
        "Fn::If": ["HasRemoteWrite", {"Ref": "SeriesSlotPolicy"}, {"Ref": "AWS::NoValue"}]
    }
    for fn in (name for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"):
        assert conditional in resources[fn]["Properties"]["Policies"], fn


# --- logs and outputs ----------------------------------------------------------------------


def test_every_log_group_has_retention_and_functions_use_one(resources: dict[str, Any]) -> None:
    groups = _of_type(resources, "AWS::Logs::LogGroup")
    assert groups
    for name, group in groups.items():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
    for fn in FUNCTIONS:
        ref = resources[fn]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert ref in groups, fn
    assert resources["PaymentsApi"]["Properties"]["AccessLogSettings"]
    template_params = decode_str(TEMPLATE.read_text(encoding="utf-8"))[0]["Parameters"]
    assert int(template_params["LogRetentionDays"]["Default"]) == 30


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    api_url = outputs["ApiUrl"]["Value"]["Fn::Sub"]
    assert api_url == "https://${PaymentsApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/"
    assert outputs["StateMachineArn"]["Value"] == {"Ref": "PaymentWorkflow"}
    assert outputs["PaymentsTableName"]["Value"] == {"Ref": "PaymentsTable"}


def test_every_alarm_notifies_the_alarms_topic(resources: dict[str, Any]) -> None:
    # What the observability section is for (it used to pin its comment line instead).
    topics = _of_type(resources, "AWS::SNS::Topic")
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm")
    assert alarms and len(topics) == 1
    topic = {"Ref": next(iter(topics))}
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [topic], name
        assert props["OKActions"] == [topic], name
    assert _of_type(resources, "AWS::CloudWatch::Dashboard")
