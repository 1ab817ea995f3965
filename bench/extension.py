"""Export off the response path: the in-process extension vs the inline flush, same run.

One child per (mode, receivers): create_payment on the in-memory fakes (canned workflow: one
invocation per payment), served through `bench.lambda_api` (Lambda's Runtime + Extensions
API on loopback) by `MiniRuntime`, metrics with remote write on every flush and tracing at
100 % over OTLP/HTTP to loopback receivers answering at once (`up`), 600 ms late (`slow`)
or refusing connections (`down`).

  extension  the layer registers its internal extension; the wrapper only records
  inline     OBSERVABILITY_EXTENSION=off: the wrapper flushes before returning (bounded)
  none       the undecorated handler (no telemetry): the response-path baseline

Per invocation: response time (queued -> response posted), CPU of the runtime thread (the
response path: handler, wrapper, posting), post-runtime time (response -> the extension's
next `event/next`, Lambda's PostRuntimeExtensionsDuration). Spans: after a final flush
(the shutdown flush), exported + still queued + dropped = ended; `lost` = dropped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from bench.common import Json, child_main, create_payment_event, median, percentile

PACE_S = 0.02  # between invocations: busy traffic (the adaptive policy flushes periodically)


def _child(spec: Json) -> Json:
    from bench import fakes
    from bench.lambda_api import FakeLambdaApi, MiniRuntime
    from bench.warm import config_env

    mode = spec["mode"]
    os.environ.update(config_env("trace100", {"rw": spec["rw"], "otlp": spec["otlp"]}))
    os.environ["PROMETHEUS_REMOTE_WRITE_INTERVAL_SECONDS"] = "0"
    os.environ["OBSERVABILITY_FLUSH_INTERVAL_MS"] = str(spec.get("interval_ms", 1000))
    api = FakeLambdaApi("CreatePaymentFunction")
    os.environ["AWS_LAMBDA_RUNTIME_API"] = api.address
    os.environ["OBSERVABILITY_EXTENSION"] = "on" if mode == "extension" else "off"
    fakes.install(workflow="canned")
    handler = fakes.load_handler("create_payment", unwrap=mode == "none")
    runtime = MiniRuntime(api, handler)
    cpu: list[float] = []
    original = runtime.handle_one

    def timed(request_id: str, body: bytes) -> None:
        started = time.thread_time()
        original(request_id, body)
        cpu.append((time.thread_time() - started) * 1000)

    runtime.handle_one = timed  # type: ignore[method-assign]
    runtime.start()
    response, post = [], []
    for i in range(int(spec["n"]) + 5):
        outcome = api.invoke(json.loads(json.dumps(create_payment_event())))
        extra = api.post_runtime() if mode == "extension" else 0.0
        if i >= 5:  # warm-up: cold start, first exports
            response.append(outcome.response_s * 1000)
            post.append((extra or 0.0) * 1000)
        time.sleep(PACE_S)
    return {**_spans(mode), **_stats(response, post, cpu[5:])}


def _spans(mode: str) -> Json:
    from payments import observability

    if mode == "none":
        return {"spans_ended": 0, "spans_lost": 0, "spans_exported": 0}
    obs = observability.container()
    obs.flush(15.0, final=True)  # the shutdown flush: whatever is still queued leaves now
    queues = obs.processor.queues
    exported = sum(q.exported for q in queues)
    dropped = sum(q.dropped for q in queues)
    pending = sum(len(q) for q in queues)
    return {
        "spans_ended": exported + dropped + pending,
        "spans_lost": dropped,
        "spans_exported": exported,
    }


def _stats(response: list[float], post: list[float], cpu: list[float]) -> Json:
    def summary(values: list[float]) -> Json:
        return {"p50_ms": median(values), "p99_ms": percentile(values, 99)}

    return {
        "n": len(response),
        "response": summary(response),
        "post_runtime": summary(post),
        "cpu_ms_per_invocation": median(cpu),
    }


def table_rows(results: dict[str, Json]) -> list[list[Any]]:
    base = results.get("none/up", {}).get("cpu_ms_per_invocation", float("nan"))
    rows = []
    for name, e in results.items():
        rows.append(
            [
                name,
                e["n"],
                e["response"]["p50_ms"],
                e["response"]["p99_ms"],
                e["cpu_ms_per_invocation"],
                e["cpu_ms_per_invocation"] - base,
                e["post_runtime"]["p50_ms"],
                e["post_runtime"]["p99_ms"],
                f"{e['spans_exported']}/{e['spans_ended']}",
                e["spans_lost"],
            ]
        )
    return rows


HEADERS = [
    "mode/receivers",
    "n",
    "response p50 ms",
    "response p99 ms",
    "response-path CPU ms/inv",
    "added CPU ms/inv",
    "post-runtime p50 ms",
    "post-runtime p99 ms",
    "spans exported",
    "spans lost",
]


if __name__ == "__main__":
    if not child_main(sys.argv[1:], _child):
        sys.exit("usage: python -m bench (this module runs as a child)")
