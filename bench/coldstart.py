"""Cold start: import of each handler module plus client creation, in fresh interpreters.

Every variant runs `runs` times in a fresh interpreter, the variants interleaved round by
round so that machine noise spreads evenly. Time is measured inside the interpreter, from
before the first import to after the clients exist (interpreter start-up, identical for
all, excluded). Variants:

  baseline        import boto3 + one DynamoDB client
  fn:<name>       functions/<name>/app.py loaded as Lambda loads it, its clients created
                  (boto3 DynamoDB / Step Functions, the Stripe client for channel and refund)
                  and `instrument`'s once-per-environment set-up (tracer provider with the
                  OTLP exporter, metrics, logger), which Lambda pays on the first invocation
  obs:layer       baseline + `payments.observability` imported and set up
  obs:powertools  baseline + Powertools Logger + Metrics + Tracer (X-Ray SDK, boto3 patched)
  obs:otel        baseline + OpenTelemetry SDK, OTLP/HTTP exporter, botocore and aws-lambda
                  instrumentation (what the OTel Lambda layer's auto-instrumentation installs)

Added cost of an observability stack = its median minus the baseline median (same run).
Layer and function source is measured two ways: as deployed (no .pyc: Lambda's file system
is read-only and `sam build` does not compile the layer) and precompiled (a copy with .pyc,
like site-packages).
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.common import FUNCTIONS, ROOT, SERVICES, Json, median, percentile, ratio

_TIMER_START = "import time as _t\n_t0 = _t.perf_counter()\n"
_TIMER_END = (
    "\nimport json as _j, sys as _s\n"
    "_s.stdout.write(_j.dumps({'ms': (_t.perf_counter() - _t0) * 1000}))\n"
)

BASELINE = "import boto3\nboto3.client('dynamodb')\n"

_CONTEXT = "class _Ctx:\n    function_name = 'bench'\n    aws_request_id = 'cold'\n"


def function_code(function: str, functions_dir: Path) -> str:
    app = functions_dir / function / "app.py"
    lines = [
        "import importlib.util as _u",
        f"_spec = _u.spec_from_file_location('app', {str(app)!r})",
        "_m = _u.module_from_spec(_spec)",
        "_spec.loader.exec_module(_m)",
    ]
    if function in ("create_payment", "refund", "risk_check", "order"):
        lines += ["from payments.store import clients as _c", "_c.dynamodb()"]
    if function == "create_payment":
        lines.append("_c.stepfunctions()")
    if function in ("refund", "channel"):
        lines += ["from payments.channel import get_channel as _g", "_g('stripe')"]
    lines += [
        _CONTEXT,
        "from payments import observability as _o",
        f"_o._initialise({SERVICES[function]!r}, _Ctx())",
    ]
    return "\n".join(lines) + "\n"


OBS_LAYER = (
    BASELINE
    + _CONTEXT
    + ("from payments import observability as _o\n_o._initialise('payment-gateway', _Ctx())\n")
)
OBS_POWERTOOLS = BASELINE + (
    "from aws_lambda_powertools import Logger, Metrics, Tracer\n"
    "logger = Logger(service='payment-gateway')\n"
    "metrics = Metrics(namespace='PaymentGateway', service='payment-gateway')\n"
    "tracer = Tracer(service='payment-gateway')\n"  # auto_patch: boto3/botocore, requests
)
OBS_OTEL = BASELINE + (
    "from opentelemetry import trace\n"
    "from opentelemetry.sdk.trace import TracerProvider\n"
    "from opentelemetry.sdk.trace.export import BatchSpanProcessor\n"
    "from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter\n"
    "_p = TracerProvider()\n"
    "_p.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))\n"
    "trace.set_tracer_provider(_p)\n"
    "from opentelemetry.instrumentation.botocore import BotocoreInstrumentor\n"
    "BotocoreInstrumentor().instrument()\n"
    "from opentelemetry.instrumentation.aws_lambda import AwsLambdaInstrumentor\n"
    "AwsLambdaInstrumentor().instrument()\n"
)


def otel_available() -> bool:
    try:
        import opentelemetry.instrumentation.aws_lambda
        import opentelemetry.instrumentation.botocore  # noqa: F401
    except ImportError:
        return False
    return True


def _env(pythonpath: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
    env.update(
        {
            "PYTHONPATH": pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_LAMBDA_FUNCTION_NAME": "bench",
            "LAMBDA_TASK_ROOT": str(ROOT),
            "POWERTOOLS_TRACE_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "TRACES_EXPORTER_XRAY": "false",
            "PROMETHEUS_REMOTE_WRITE_URL": "http://127.0.0.1:9/api/v1/write",
            "_HANDLER": "bench._lambda_handler.handler",
            "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:bench",
            "STRIPE_API_KEY": "sk_test_local",
        }
    )
    return env


def _once(code: str, env: Mapping[str, str]) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", _TIMER_START + code + _TIMER_END],
        cwd=tempfile.gettempdir(),
        env=dict(env),
        capture_output=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace")[-1500:])
    return float(json.loads(proc.stdout.decode().strip().splitlines()[-1])["ms"])


def run(runs: int = 15, functions: tuple[str, ...] = FUNCTIONS, progress: Any = None) -> Json:
    with tempfile.TemporaryDirectory(prefix="bench-pyc-") as tmp:
        compiled = Path(tmp)
        shutil.copytree(ROOT / "layers" / "common" / "payments", compiled / "layer" / "payments")
        shutil.copytree(ROOT / "functions", compiled / "functions")
        shutil.copytree(
            ROOT / "bench", compiled / "layer" / "bench", ignore=shutil.ignore_patterns("*.json")
        )
        compileall.compile_dir(str(compiled), quiet=1)
        source_env = _env(f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}")
        compiled_env = _env(str(compiled / "layer"))
        variants: dict[str, tuple[str, Mapping[str, str]]] = {
            "baseline": (BASELINE, source_env),
            "obs:layer": (OBS_LAYER, source_env),
            "obs:layer(pyc)": (OBS_LAYER, compiled_env),
            "obs:powertools": (OBS_POWERTOOLS, source_env),
        }
        has_otel = otel_available()
        if has_otel:
            variants["obs:otel"] = (OBS_OTEL, source_env)
        for fn in functions:
            variants[f"fn:{fn}"] = (function_code(fn, ROOT / "functions"), source_env)
            variants[f"fn:{fn}(pyc)"] = (function_code(fn, compiled / "functions"), compiled_env)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for round_no in range(runs):
            order = list(variants)
            order = order[round_no % len(order) :] + order[: round_no % len(order)]
            for name in order:
                code, env = variants[name]
                samples[name].append(_once(code, env))
            if progress is not None:
                progress(f"cold start round {round_no + 1}/{runs}")
    return summarise(samples, runs, has_otel)


def summarise(samples: Mapping[str, list[float]], runs: int, has_otel: bool) -> Json:
    stats = {
        name: {"median_ms": median(values), "p90_ms": percentile(values, 90), "runs": len(values)}
        for name, values in samples.items()
    }
    base = stats["baseline"]["median_ms"]
    for entry in stats.values():
        entry["ratio_to_boto3"] = ratio(entry["median_ms"], base)
    added = {
        name.removeprefix("obs:"): stats[name]["median_ms"] - base
        for name in stats
        if name.startswith("obs:")
    }
    layer_vs: dict[str, Json] = {}
    for alt in ("powertools", "otel"):
        if alt in added:
            for flavour in ("layer", "layer(pyc)"):
                layer_vs[f"{flavour} / {alt}"] = {
                    "ratio": ratio(added[flavour], added[alt]),
                    "target": 0.5,
                    "met": ratio(added[flavour], added[alt]) <= 0.5,
                }
    functions_ok = {
        name: {
            "ratio": entry["ratio_to_boto3"],
            "target": 1.5,
            "met": entry["ratio_to_boto3"] <= 1.5,
        }
        for name, entry in stats.items()
        if name.startswith("fn:")
    }
    return {
        "runs": runs,
        "otel_alternative_installed": has_otel,
        "variants": stats,
        "added_ms": added,
        "targets": {"function_vs_boto3": functions_ok, "layer_added_vs_alternative": layer_vs},
    }
