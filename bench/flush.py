"""Flush cost: time on the response path spent in metrics and span flushing.

create_payment (fake data layer, canned workflow: one flush per invocation), metrics with
remote write + tracing at 100% over OTLP/HTTP, OBSERVABILITY_FLUSH_TIMEOUT_MS=200. The
layer's `_flush` (spans exported concurrently with metrics, one deadline) is timed, and inside
it `metrics.flush` (EMF + remote write) and the wait for the span export separately. Receivers:
  up     loopback receivers answering at once
  down   nothing listening (connection refused)
  hung   listening but never answering (a stuck backend; the bound is what saves us)
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from bench.common import Json, child_main, create_payment_event, median, percentile

BOUND_MS = 200.0


def _child(spec: Json) -> Json:
    from bench import fakes
    from bench.warm import config_env

    os.environ.update(config_env("trace100", {"rw": spec["rw"], "otlp": spec["otlp"]}))
    os.environ["OBSERVABILITY_FLUSH_TIMEOUT_MS"] = str(BOUND_MS)
    fakes.install(workflow="canned")
    handler = fakes.load_handler("create_payment")

    import payments.observability as observability
    from payments.observability import metrics, tracing

    timings: dict[str, list[float]] = {"total": [], "metrics": [], "spans": []}

    def timed(name: str, function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timings[name].append((time.perf_counter() - started) * 1000)

        return run

    observability._flush = timed("total", observability._flush)
    metrics.flush = timed("metrics", metrics.flush)
    tracing.wait_flush = timed("spans", tracing.wait_flush)  # time spent waiting on spans
    invocation: list[float] = []
    for _ in range(int(spec["n"])):
        event = create_payment_event()
        started = time.perf_counter()
        handler(json.loads(json.dumps(event)), fakes.Context("CreatePaymentFunction"))
        invocation.append((time.perf_counter() - started) * 1000)
    out: Json = {
        "n": int(spec["n"]),
        "bound_ms": BOUND_MS,
        "failures": metrics.remote_write_failures,
    }
    for name, values in (*timings.items(), ("invocation", invocation)):
        out[name] = {
            "p50_ms": median(values),
            "p99_ms": percentile(values, 99),
            "max_ms": max(values),
        }
    out["within_bound"] = out["total"]["max_ms"] <= BOUND_MS * 1.1  # 10% scheduling slack
    return out


if __name__ == "__main__":
    if not child_main(sys.argv[1:], _child):
        sys.exit("usage: python -m bench (this module runs as a child)")
