"""Read the SAM template into a small typed model for the local stack.

The template is the single source of truth: functions, routes, tables and the state
machine all come from it, so the local stack cannot drift from what is deployed.
Intrinsic functions are resolved to *local* values (account 123456789012, us-east-1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK_NAME = "payments-local"

# Dynamic references ({{resolve:ssm:...}}) have no local store: these are the values
# used unless the caller overrides the variable; anything else resolves to "local".
LOCAL_SECRETS: dict[str, str] = {
    "STRIPE_API_KEY": "sk_test_local",
    "STRIPE_WEBHOOK_SECRETS": "whsec_local_secret",
}


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def state_machine_arn(name: str) -> str:
    return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"


@dataclass(frozen=True)
class Route:
    method: str  # upper case; "ANY" matches every method
    path: str  # template such as /api/v1/payments/{payment_no}
    function: str  # logical id


@dataclass(frozen=True)
class Function:
    logical_id: str
    code_dir: Path
    handler: str
    timeout: int
    memory: int
    environment: dict[str, str]
    reserved_concurrency: int | None = None  # ReservedConcurrentExecutions, when set

    @property
    def arn(self) -> str:
        return function_arn(self.logical_id)


@dataclass(frozen=True)
class Table:
    logical_id: str
    name: str
    key_schema: list[dict[str, str]]
    attribute_definitions: list[dict[str, str]]
    ttl_attribute: str | None = None
    global_indexes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class StateMachine:
    logical_id: str
    name: str
    definition_path: Path
    substitutions: dict[str, str]
    type: str

    @property
    def arn(self) -> str:
        return state_machine_arn(self.name)

    def definition(self) -> str:
        text = self.definition_path.read_text()
        for key, value in self.substitutions.items():
            text = text.replace("${" + key + "}", value)
        return text


@dataclass(frozen=True)
class Template:
    path: Path
    functions: dict[str, Function]
    routes: list[Route]
    tables: dict[str, Table]
    state_machines: dict[str, StateMachine]
    layer_dirs: list[Path] = field(default_factory=list)

    @property
    def state_machine(self) -> StateMachine | None:
        return next(iter(self.state_machines.values()), None)

    def find_function(self, name: str) -> Function | None:
        """Accept a logical id, a code directory name or an ARN (as Lambda accepts ARNs)."""
        name = name.rsplit(":function:", 1)[-1].split(":", 1)[0]
        if name in self.functions:
            return self.functions[name]
        return next((f for f in self.functions.values() if f.code_dir.name == name), None)


def read_yaml(path: Path) -> dict[str, Any]:
    """The template as plain data, CloudFormation short tags in their long form."""
    data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    return data if isinstance(data, dict) else {}


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that turns CloudFormation short tags (!Ref, !GetAtt...) into long form."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _construct_tag)


class _Resolver:
    """Evaluates intrinsics for local use; unknown constructs resolve to an empty string."""

    def __init__(self, doc: Mapping[str, Any], overrides: Mapping[str, str]) -> None:
        self.doc = doc
        self.resources: Mapping[str, Any] = doc.get("Resources", {})
        self.params = {
            name: str(overrides.get(name, spec.get("Default", "")))
            for name, spec in doc.get("Parameters", {}).items()
        }
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        """Evaluated on first use, so conditions may refer to each other in any order."""
        if name not in self._conditions:
            self._conditions[name] = bool(self.resolve(self.doc.get("Conditions", {})[name]))
        return self._conditions[name]

    def physical_name(self, logical_id: str) -> str:
        res = self.resources.get(logical_id, {})
        props = res.get("Properties", {}) or {}
        kind = res.get("Type", "")
        for key in ("TableName", "Name", "StateMachineName"):
            if key in props and kind != "AWS::Serverless::Function":
                return str(self.resolve(props[key]))
        return logical_id

    def ref(self, name: str) -> str:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": STACK_NAME,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": "",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        kind = self.resources.get(name, {}).get("Type", "")
        if kind.endswith("StateMachine"):  # Ref of a state machine is its ARN
            return state_machine_arn(self.physical_name(name))
        return self.physical_name(name)

    def get_att(self, name: str, attr: str) -> str:
        kind = self.resources.get(name, {}).get("Type", "")
        if kind.endswith("::Function") and attr == "Arn":
            return function_arn(name)
        if kind.endswith("StateMachine"):
            smn = self.physical_name(name)
            return smn if attr == "Name" else state_machine_arn(smn)
        if kind.endswith("::Table") and attr == "Arn":
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{self.physical_name(name)}"
        return f"{name}.{attr}"

    def _sub(self, text: str, extra: Mapping[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key.startswith("!"):
                return "${" + key[1:] + "}"
            if key in extra:
                return str(self.resolve(extra[key]))
            if "." in key and not key.startswith("AWS::"):
                return self.get_att(*key.split(".", 1))
            return self.ref(key)

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self.resolve(v) for k, v in value.items()}
        ((key, arg),) = value.items()
        if key == "Ref":
            return self.ref(str(arg))
        if key == "Fn::GetAtt":
            return self.get_att(str(arg[0]), str(arg[1]))
        if key == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            return self._sub(text, extra)
        if key == "Fn::Join":
            return str(arg[0]).join(str(self.resolve(v)) for v in self.resolve(arg[1]))
        if key == "Fn::Select":
            return self.resolve(arg[1])[int(self.resolve(arg[0]))]
        if key == "Fn::Split":
            return str(self.resolve(arg[1])).split(str(arg[0]))
        if key == "Fn::If":
            return self.resolve(arg[1] if self.condition(str(arg[0])) else arg[2])
        if key == "Fn::Equals":
            return self.resolve(arg[0]) == self.resolve(arg[1])
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(a) for a in arg)
        if key == "Fn::Or":
            return any(self.resolve(a) for a in arg)
        if key == "Condition":
            return self.condition(str(arg))
        if key == "Fn::FindInMap":
            m, k1, k2 = (self.resolve(a) for a in arg)
            return self.doc.get("Mappings", {})[m][k1][k2]
        return {key: self.resolve(arg)}


def _env_value(name: str, raw: Any, overrides: Mapping[str, str]) -> str:
    text = "" if raw is None else str(raw)
    if name in overrides:
        return overrides[name]
    if "{{resolve:" in text:
        return LOCAL_SECRETS.get(name, "local")
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return text


def _functions(
    doc: Mapping[str, Any], res: _Resolver, base: Path, overrides: Mapping[str, str]
) -> dict[str, Function]:
    glob = (doc.get("Globals", {}) or {}).get("Function", {}) or {}
    out: dict[str, Function] = {}
    for lid, body in res.resources.items():
        if body.get("Type") != "AWS::Serverless::Function":
            continue
        props = {**glob, **(body.get("Properties") or {})}
        env_raw = {
            **((glob.get("Environment") or {}).get("Variables") or {}),
            **(((body.get("Properties") or {}).get("Environment") or {}).get("Variables") or {}),
        }
        env = {k: _env_value(k, res.resolve(v), overrides) for k, v in env_raw.items()}
        out[lid] = Function(
            logical_id=lid,
            code_dir=(base / str(res.resolve(props.get("CodeUri", ".")))).resolve(),
            handler=str(props.get("Handler", "app.handler")),
            timeout=int(res.resolve(props.get("Timeout", 3))),
            memory=int(res.resolve(props.get("MemorySize", 128))),
            environment=env,
            reserved_concurrency=_reserved(res.resolve(props.get("ReservedConcurrentExecutions"))),
        )
    return out


def _reserved(value: Any) -> int | None:
    """ReservedConcurrentExecutions (AWS::NoValue and absent alike mean "not set")."""
    return None if value in (None, "") else int(value)


def _routes(res: _Resolver) -> list[Route]:
    routes: list[Route] = []
    for lid, body in res.resources.items():
        if body.get("Type") != "AWS::Serverless::Function":
            continue
        for event in ((body.get("Properties") or {}).get("Events") or {}).values():
            if event.get("Type") not in ("HttpApi", "Api"):
                continue
            props = event.get("Properties") or {}
            method = str(res.resolve(props.get("Method", "ANY"))).upper()
            path = str(res.resolve(props.get("Path", "/{proxy+}")))
            routes.append(
                Route(
                    "ANY" if method in ("*", "X-AMAZON-APIGATEWAY-ANY-METHOD") else method,
                    path,
                    lid,
                )
            )
    return routes


def _tables(res: _Resolver) -> dict[str, Table]:
    out: dict[str, Table] = {}
    for lid, body in res.resources.items():
        if body.get("Type") != "AWS::DynamoDB::Table":
            continue
        props = res.resolve(body.get("Properties") or {})
        ttl = props.get("TimeToLiveSpecification") or {}
        out[lid] = Table(
            logical_id=lid,
            name=str(props.get("TableName") or lid),
            key_schema=props["KeySchema"],
            attribute_definitions=props["AttributeDefinitions"],
            ttl_attribute=ttl.get("AttributeName") if ttl.get("Enabled", True) else None,
            global_indexes=props.get("GlobalSecondaryIndexes") or [],
        )
    return out


def _state_machines(res: _Resolver, base: Path) -> dict[str, StateMachine]:
    out: dict[str, StateMachine] = {}
    for lid, body in res.resources.items():
        if body.get("Type") not in ("AWS::Serverless::StateMachine",):
            continue
        props = body.get("Properties") or {}
        subs = {
            k: str(res.resolve(v)) for k, v in (props.get("DefinitionSubstitutions") or {}).items()
        }
        out[lid] = StateMachine(
            logical_id=lid,
            name=res.physical_name(lid),
            definition_path=(base / str(props["DefinitionUri"])).resolve(),
            substitutions=subs,
            type=str(res.resolve(props.get("Type", "STANDARD"))).upper(),
        )
    return out


def load_template(
    path: str | Path = "template.yaml", overrides: Mapping[str, str] | None = None
) -> Template:
    """Parse the template; `overrides` set Parameter values and function env values by name."""
    overrides = dict(overrides or {})
    tpl_path = Path(path).resolve()
    doc = yaml.load(tpl_path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    res = _Resolver(doc, overrides)
    base = tpl_path.parent
    return Template(
        path=tpl_path,
        functions=_functions(doc, res, base, overrides),
        routes=_routes(res),
        tables=_tables(res),
        state_machines=_state_machines(res, base),
        layer_dirs=_layer_dirs(res, base),
    )


def _layer_dirs(res: _Resolver, base: Path) -> list[Path]:
    """ContentUri of each layer: Lambda puts a python layer's content on sys.path."""
    return [
        (base / str(res.resolve((body.get("Properties") or {}).get("ContentUri", ".")))).resolve()
        for body in res.resources.values()
        if body.get("Type") == "AWS::Serverless::LayerVersion"
    ]
