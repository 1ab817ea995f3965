"""Warm per-invocation overhead of create_payment under four monitoring configurations.

Each (mode, configuration) runs in a fresh interpreter: sequential invocations (one
execution environment serves one invocation at a time), latency per invocation, process
CPU time and peak RSS.

Modes:
  real  the real handler and logic; DynamoDB and Step Functions (the real ASL) served
        in-process by moto through local.aws, the task Lambdas by the in-process runtime,
        the channel by the Stripe simulator on loopback. CPU and RSS are the whole process
        (moto, simulator and all five functions).
  fake  the same handlers with the data layer (stores, workflow, channel) on in-memory fakes;
        the workflow runs the four task handlers in-process. The layer's own cost is visible.

Configurations (instrument() has no off switch, so "none" calls the undecorated handler):
  none      handler.__wrapped__ for every function: no spans, no flush, no HTTP metrics
            (business code still records its counters in memory; nothing is exported)
  metrics   instrument(), OTEL_TRACES_SAMPLER=always_off, EMF to stdout + remote write
            to a loopback receiver
  trace100  metrics + parentbased_always_on, OTLP/HTTP to a loopback receiver
  trace10   metrics + parentbased_traceidratio 0.1, OTLP/HTTP to a loopback receiver
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.common import (
    STRIPE_KEY,
    Json,
    child_main,
    cpu_seconds,
    create_payment_event,
    median,
    percentile,
    rss_mb,
)

CONFIGS = ("none", "metrics", "trace100", "trace10")
LABELS = {
    "none": "no monitoring",
    "metrics": "+ metrics (EMF + remote write)",
    "trace100": "+ tracing 100%",
    "trace10": "+ tracing 10%",
}


def config_env(config: str, sinks: Json) -> dict[str, str]:
    env = {
        "PROMETHEUS_REMOTE_WRITE_URL": sinks.get("rw", ""),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "TRACES_EXPORTER_XRAY": "false",
        "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "OBSERVABILITY_FLUSH_TIMEOUT_MS": "200",
    }
    if config in ("trace100", "trace10"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sinks.get("otlp", "")
    if config == "trace100":
        env["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
    elif config == "trace10":
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = "0.1"
    return env


def _measure(invoke: Any, n: int, warmup: int) -> Json:
    errors = 0
    for _ in range(warmup):
        invoke(create_payment_event())
    latencies: list[float] = []
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    for _ in range(n):
        event = create_payment_event()
        started = time.perf_counter()
        status = invoke(event)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 201:
            errors += 1
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds() - cpu0
    _current, peak = rss_mb()
    return {
        "n": n,
        "errors": errors,
        "throughput": n / wall,
        "p50_ms": median(latencies),
        "p99_ms": percentile(latencies, 99),
        "cpu_pct": 100.0 * cpu / wall,
        "cpu_ms_per_req": 1000.0 * cpu / n,
        "peak_rss_mb": peak,
    }


def _child(spec: Json) -> Json:
    config, mode = spec["config"], spec["mode"]
    os.environ.update(config_env(config, spec.get("sinks", {})))
    unwrap = config == "none"
    if mode == "real":
        return _real(spec, unwrap)
    return _fake(spec, unwrap)


def _real(spec: Json, unwrap: bool) -> Json:
    from local import runtime as runtime_module
    from local.aws import start_emulator
    from local.stripe_sim import make_app, serve

    if unwrap:
        original = runtime_module.LambdaRuntime._load

        def load_undecorated(self: Any, fn: Any) -> Any:
            handler = original(self, fn)
            return getattr(handler, "__wrapped__", handler)

        runtime_module.LambdaRuntime._load = load_undecorated  # type: ignore[method-assign]
    sim = serve("127.0.0.1", 0, app=make_app(STRIPE_KEY))
    keys = ("PROMETHEUS_REMOTE_WRITE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "TRACES_EXPORTER_XRAY")
    overrides = {k: os.environ[k] for k in keys}
    overrides.update(
        {
            k: os.environ[k]
            for k in (
                "OTEL_TRACES_SAMPLER",
                "OTEL_TRACES_SAMPLER_ARG",
                "OBSERVABILITY_FLUSH_TIMEOUT_MS",
            )
        }
    )
    overrides.update(
        {
            "STRIPE_API_BASE": sim.url,
            "STRIPE_API_KEY": STRIPE_KEY,
            "BREAKER_FAILURE_THRESHOLD": "1000",
        }
    )
    handle = start_emulator(env_overrides=overrides)
    try:

        def invoke(event: Json) -> int:
            result, error = handle.runtime.invoke("CreatePaymentFunction", event)
            return -1 if error is not None else int(result["statusCode"])

        return _measure(invoke, int(spec["n"]), int(spec["warmup"]))
    finally:
        handle.stop()
        sim.stop()


def _fake(spec: Json, unwrap: bool) -> Json:
    import json

    from bench import fakes

    fakes.install(workflow="inline", unwrap=unwrap)
    handler = fakes.load_handler("create_payment", unwrap=unwrap)

    def invoke(event: Json) -> int:
        # JSON both ways, as the Lambda runtime does.
        result = handler(json.loads(json.dumps(event)), fakes.Context("CreatePaymentFunction"))
        return int(json.loads(json.dumps(result))["statusCode"])

    return _measure(invoke, int(spec["n"]), int(spec["warmup"]))


if __name__ == "__main__":
    if not child_main(sys.argv[1:], _child):
        sys.exit("usage: python -m bench (this module runs as a child)")
