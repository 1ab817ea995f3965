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

Instruction counts (`instructions` spec, run by bench.__main__.run_warm_instructions under
valgrind callgrind, all threads): the same child with CALLGRIND_ENV on top, so that timing
cannot change the work done. Every inline flush (outside Lambda one runs after each
instrumented invocation, as the extension's does after each response on Lambda) is waited
for to completion, the remote write interval is taken out (a write in the warm-up's first
flush and one in the final flush, forced, after the last payment: both cancel between two
runs), `random` is seeded (trace ids, hence the 10 % sample, repeat), and the sampled spans
of the measured payments are counted so that a 10 % sample that is not exactly 10 % of the
window can be corrected for.
"""

from __future__ import annotations

import os
import random
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


# Under valgrind (~50x slower) a 200 ms flush bound would cut exports short and a 5 s
# remote-write interval would cover a handful of payments instead of hundreds.
CALLGRIND_ENV = {
    "OBSERVABILITY_FLUSH_TIMEOUT_MS": "600000",
    "OBSERVABILITY_EXPORT_TIMEOUT_MS": "600000",
    "METRICS_FLUSH_TIMEOUT_MS": "600000",
    "PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS": "1000000000",
}
# Passed to the in-process runtime's functions (real mode) as well.
OVERRIDDEN = (
    "PROMETHEUS_REMOTE_WRITE_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "TRACES_EXPORTER_XRAY",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OBSERVABILITY_FLUSH_TIMEOUT_MS",
    *CALLGRIND_ENV,
)


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


def _spans_ended() -> int:
    """Spans ended so far (sampled ones reach every exporter's queue; counted per exporter)."""
    from payments.observability.container import container

    queues = container().processor.queues
    total = sum(q.exported + len(q) + q.dropped for q in queues)
    return total // len(queues) if queues else 0


def _exporting() -> bool:
    from payments.observability.container import container

    return bool(container().processor.queues)


def _final_flush() -> None:
    """Export what the last payments left (spans, EMF, a forced remote write), waited for."""
    from payments.observability.container import container

    container().flush(600.0, final=True)


def _measure(
    invoke: Any, n: int, warmup: int, final_flush: bool = False, until_sampled: bool = False
) -> Json:
    """`until_sampled`: warm up until a payment was sampled, so that the exporter's first
    export (its import, its connection) is not in the measured window."""
    errors = 0
    for _ in range(warmup):
        invoke(create_payment_event())
    extra = 0
    until_sampled = until_sampled and _exporting()
    while until_sampled and _spans_ended() == 0 and extra < 200:
        invoke(create_payment_event())
        extra += 1
    spans0 = _spans_ended()
    latencies: list[float] = []
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    for _ in range(n):
        event = create_payment_event()
        started = time.perf_counter()
        status = invoke(event)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 201:
            errors += 1
    if final_flush:
        _final_flush()
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
        "spans": _spans_ended() - spans0,
        "warmup": warmup + extra,
    }


def _child(spec: Json) -> Json:
    config, mode = spec["config"], spec["mode"]
    os.environ.update(config_env(config, spec.get("sinks", {})))
    if spec.get("instructions"):
        os.environ.update(CALLGRIND_ENV)
        random.seed(int(spec.get("seed", 12)))
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
    overrides = {k: os.environ[k] for k in OVERRIDDEN if k in os.environ}
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

        return _measure(invoke, int(spec["n"]), int(spec["warmup"]), *_instructions(spec))
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

    return _measure(invoke, int(spec["n"]), int(spec["warmup"]), *_instructions(spec))


def _instructions(spec: Json) -> tuple[bool, bool]:
    """Instruction runs: a final flush (none has nothing to export) and, when tracing, a
    warm-up that lasts until a payment was sampled."""
    on = bool(spec.get("instructions"))
    return on and spec["config"] != "none", on and spec["config"].startswith("trace")


if __name__ == "__main__":
    if not child_main(sys.argv[1:], _child):
        sys.exit("usage: python -m bench (this module runs as a child)")
