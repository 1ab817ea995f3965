"""Cold start: INIT + first invocation per function, in a Lambda-like venv, vs boto3 + client.

The venv (`.local/lambda-venv`, created on first use) holds the layer's pins plus boto3 and
botocore, as the Lambda python3.12 runtime does: none of the dev tooling, no awscrt or
pyOpenSSL (which the dev venv carries and which slows `import boto3` down, flattering any
ratio). Sources are a copy compiled like `sam build` does (unchecked-hash .pyc).

Every variant runs in a fresh interpreter that first starts a loopback Lambda Runtime +
Extensions API (`bench.lambda_api`, the same for every variant) and sets
AWS_LAMBDA_RUNTIME_API, so the layer registers its extension as on Lambda. Measured from
before the first import to the first invocation's return:

  empty      nothing (subtracted from the instruction counts: interpreter + API server)
  baseline   import boto3 + one DynamoDB client
  fn:<name>  functions/<name>/app.py loaded as Lambda loads it, its clients created, and
             one invocation on the in-memory data layer (bench.fakes): what a caller waits
             for on a cold start, export excluded (the extension does it afterwards)

Figures: wall-clock medians of interleaved runs, and instructions (valgrind callgrind, one
run per variant: deterministic to a fraction of a percent) minus `empty`. Ratio = variant /
baseline.
"""

from __future__ import annotations

import compileall
import functools
import json
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.coldstubs import WEBHOOK_SECRET
from bench.common import ROOT, STRIPE_KEY, Json, count_instructions, median, percentile, ratio

VENV = ROOT / ".local" / "lambda-venv"
PRELUDE = (
    "import os, sys, time as _t\n"
    "from bench.lambda_api import FakeLambdaApi as _Api\n"
    "_api = _Api('bench')\n"
    "os.environ['AWS_LAMBDA_RUNTIME_API'] = _api.address\n"
    "_t0 = _t.perf_counter()\n"
)
EPILOGUE = (
    "\n_ms = (_t.perf_counter() - _t0) * 1000\n"
    "os.write(1, ('{\"ms\": %f}' % _ms).encode())\n"
    "os._exit(0)\n"  # now: no atexit, no export after the measurement
)
BASELINE = "import boto3\nboto3.client('dynamodb')\n"

FUNCTIONS = (
    "create_payment",
    "refund",
    "risk_check",
    "order",
    "channel",
    "webhooks",
    "reconciler",
)
# Data layer of the first invocation: bench.fakes' in-memory stores, or the real stores
# on a DynamoDB client answered in-process (bench.coldstubs: an empty table).
FAKED = ("create_payment", "refund", "risk_check", "order")
PAYMENT = {
    "payment_no": "pay_0123456789abcdef01234567",
    "merchant_id": "merch_demo",
    "merchant_order_no": "m-1",
    "amount": 1999,
    "currency": "USD",
    "channel": "stripe",
    "payment_method": "pm_card_visa",
    "customer": {"id": "cus_1", "country": "US"},
    "created_at": "2026-01-01T00:00:00Z",
}


def event(function: str) -> dict[str, Any]:
    """The first invocation's event, built by the bench (signed now), not by the variant."""
    from bench.coldstubs import webhook_event
    from bench.common import create_payment_event
    from local.events import api_event

    if function == "create_payment":
        return create_payment_event()
    if function == "refund":
        return api_event(
            "POST",
            "/api/v1/payments/{payment_no}/refunds",
            path="/api/v1/payments/pay_x/refunds",
            body={"amount": 1},
            path_params={"payment_no": "pay_x"},
        )
    if function == "webhooks":
        return webhook_event()
    if function == "reconciler":  # EventBridge Scheduler's input (template.yaml)
        return {}
    task: dict[str, Any] = {"trace_context": {}, "payment": PAYMENT}
    if function == "risk_check":
        return {"step": "RiskCheck", **task}
    if function == "order":
        return {"step": "CreateOrder", **task, "action": "create"}
    order = {"order_no": "ord_0123456789abcdef01234567", "status": "created"}
    return {"step": "ChannelPayment", **task, "order": order}


def function_code(function: str) -> str:
    """INIT (import as Lambda does) + clients + the first invocation on the fake data layer."""
    lines = [
        "import importlib.util as _u",
        f"_spec = _u.spec_from_file_location('app', 'functions/{function}/app.py')",
        "_m = _u.module_from_spec(_spec)",
        "_spec.loader.exec_module(_m)",
        "from payments.store import clients as _c",
        "from bench.coldstubs import stub_dynamodb as _s",
        "_s(_c.dynamodb())",
    ]
    if function == "create_payment":
        lines.append("_c.stepfunctions()")
    if function in FAKED:
        lines += ["from bench import fakes as _f", "_f.install_loaded(_m)"]
    lines += [
        f"_event = {event(function)!r}",
        "class _Context:",
        f"    function_name = {function!r}",
        "    aws_request_id = 'bench-request'",
        f"    invoked_function_arn = 'arn:aws:lambda:us-east-1:123456789012:function:{function}'",
        "    memory_limit_in_mb = 256",
        "    function_version = '$LATEST'",
        f"    log_group_name = '/aws/lambda/{function}'",
        "    log_stream_name = 'bench'",
        "    def get_remaining_time_in_millis(self): return 30000",
        "_m.handler(_event, _Context())",
    ]
    return "\n".join(lines) + "\n"


def ensure_venv() -> Path:
    """The Lambda-like venv: layer pins + boto3/botocore (the dev venv's pins), nothing else."""
    python = VENV / "bin" / "python"
    requirements = ROOT / "layers" / "common" / "requirements.txt"
    stamp = VENV / ".requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == requirements.read_text():
        return python
    pins = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
        if line.startswith(("boto3==", "botocore=="))
    ]
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(ROOT / "layers" / "common" / "requirements.txt"), *pins],
        check=True,
    )  # fmt: skip
    stamp.write_text(requirements.read_text())  # a changed pin rebuilds the venv
    return python


def compiled_copy(into: Path) -> Path:
    """Layer, functions and the bench helpers, compiled as `sam build` compiles them."""
    shutil.copytree(ROOT / "layers" / "common" / "payments", into / "payments")
    shutil.copytree(ROOT / "functions", into / "functions")
    shutil.copytree(ROOT / "bench", into / "bench", ignore=shutil.ignore_patterns("*.json"))
    shutil.copytree(ROOT / "local", into / "local")
    compileall.compile_dir(
        str(into),
        quiet=1,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    return into


def _env(root: Path, stripe_url: str = "http://127.0.0.1:9") -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_", "PYTHON"))
    }
    env.update(
        {
            "PYTHONPATH": str(root),
            "PYTHONDONTWRITEBYTECODE": "1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_LAMBDA_FUNCTION_NAME": "bench",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "PROMETHEUS_REMOTE_WRITE_URL": "http://127.0.0.1:9/api/v1/write",
            "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:bench",
            "STRIPE_API_KEY": STRIPE_KEY,
            "STRIPE_API_BASE": stripe_url,
            "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        }
    )
    return env


def _script(code: str) -> str:
    return PRELUDE + code + EPILOGUE


def _wall(python: Path, code: str, root: Path, stripe_url: str) -> float:
    proc = subprocess.run(
        [str(python), "-c", _script(code)], cwd=root, env=_env(root, stripe_url),
        capture_output=True,
        timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace")[-1500:])
    return float(json.loads(proc.stdout.decode().strip().splitlines()[-1])["ms"])


def _instructions(python: Path, code: str, root: Path, stripe_url: str) -> float:
    """Instructions executed by the whole process (valgrind callgrind, all threads)."""

    def run(prefix: list[str]) -> None:
        proc = subprocess.run(
            [*prefix, str(python), "-c", _script(code)],
            cwd=root, env=_env(root, stripe_url), capture_output=True, timeout=900,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace")[-1500:])

    return count_instructions(run)


def run(
    runs: int = 15,
    functions: tuple[str, ...] = FUNCTIONS,
    progress: Any = None,
    callgrind: bool = True,
) -> Json:
    python = ensure_venv()
    from local.stripe_sim import make_app, serve

    # The channel function charges through the real client: a simulator on loopback (in
    # this process, so the variants' instruction counts do not include it).
    sim = serve("127.0.0.1", 0, app=make_app(STRIPE_KEY))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
            root = compiled_copy(Path(tmp))
            # Code is generated per run: the API events are signed when the run starts.
            variants: dict[str, Callable[[], str]] = {
                "empty": lambda: "",
                "baseline": lambda: BASELINE,
            }
            for fn in functions:
                variants[f"fn:{fn}"] = functools.partial(function_code, fn)
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for round_no in range(runs):
                order = list(variants)
                order = order[round_no % len(order) :] + order[: round_no % len(order)]
                for name in order:
                    samples[name].append(_wall(python, variants[name](), root, sim.url))
                if progress is not None:
                    progress(f"cold start round {round_no + 1}/{runs}")
            instructions: dict[str, float] = {}
            if callgrind and shutil.which("valgrind"):
                for name, code in variants.items():
                    instructions[name] = _instructions(python, code(), root, sim.url)
                    if progress is not None:
                        progress(f"callgrind {name}")
    finally:
        sim.stop()
    return summarise(samples, instructions, runs)


def summarise(
    samples: Mapping[str, list[float]], instructions: Mapping[str, float], runs: int
) -> Json:
    stats: Json = {
        name: {"median_ms": median(v), "p90_ms": percentile(v, 90), "runs": len(v)}
        for name, v in samples.items()
    }
    base_ms = stats["baseline"]["median_ms"]
    empty_i = instructions.get("empty", 0.0)
    base_i = instructions.get("baseline", float("nan")) - empty_i
    for name, entry in stats.items():
        entry["ratio_ms"] = ratio(entry["median_ms"], base_ms)
        if name in instructions:
            entry["instructions_m"] = (instructions[name] - empty_i) / 1e6
            entry["ratio_instructions"] = ratio(instructions[name] - empty_i, base_i)
    return {"runs": runs, "venv": str(VENV), "variants": stats}
