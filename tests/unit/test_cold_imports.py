"""What each function's INIT imports: the cold-start budget (README, cold start) depends on it.

pydantic's import and first schema build are about half of `import boto3` + a client, the
OTLP exporter, protobuf and `requests` a further tenth each: the functions that do not
parse a merchant's request never import pydantic, and no function imports an exporter,
protobuf or the HTTP stack before it first exports or calls the provider.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from payments.config import get_settings
from payments.observability import container
get_settings()
container()
print(json.dumps(sorted(sys.modules)))
"""
NEVER_AT_INIT = ("requests", "urllib3", "google.protobuf", "cramjam", "opentelemetry.exporter")
WITHOUT_PYDANTIC = ("risk_check", "order", "channel", "reconciler", "webhooks")


def _init_modules(function: str) -> set[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))},
        "PYTHONPATH": f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}",
        # Every exporter configured: configuring one must not import it.
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "PROMETHEUS_REMOTE_WRITE_URL": "http://127.0.0.1:9/api/v1/write",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("AWS_LAMBDA_RUNTIME_API", None)
    app = ROOT / "functions" / function / "app.py"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(app)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


@pytest.mark.parametrize(
    "function",
    ["create_payment", "refund", "risk_check", "order", "channel", "webhooks", "reconciler"],
)
def test_init_imports_no_exporter_and_pydantic_only_to_parse_requests(function: str) -> None:
    modules = _init_modules(function)
    assert _loaded(modules, "payments.observability")  # the probe did load the layer
    assert [p for p in NEVER_AT_INIT if _loaded(modules, p)] == []
    assert _loaded(modules, "pydantic") is (function not in WITHOUT_PYDANTIC)
