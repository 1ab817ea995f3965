"""Slow backends: payment latency through the process-isolated local stack (`make run`'s
runtime: every execution environment an `awslambdaric` process with the layer's extension)
while the OTLP and remote-write receivers answer at once vs 600 ms late.

One stack, one loopback receiver for both protocols; between rounds only the receiver's
delay changes, so both variants run on the same warm environments, interleaved (fast, slow,
slow, fast, ...). Sequential single-client payments over HTTP (POST /api/v1/payments: the
gateway, the Express workflow and four task functions); the figure is the median client
latency per variant and their ratio (goal ≤ 1.15x). The REPORT lines of the stack give each
variant's post-runtime phases (the extension's flushes) and response-path durations.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from typing import Any

from bench.common import Json, Sink, child_main, median, payment_body, percentile, ratio

DELAY_S = 0.6
VARIANTS = {"0 ms": 0.0, f"+{DELAY_S * 1000:.0f} ms": DELAY_S}
TARGET = 1.15
_REPORT = re.compile(
    r"Duration: (?P<duration>[\d.]+) ms.*?Post-Runtime Extensions Duration: (?P<post>[\d.]+) ms"
)


class _Reports:
    """Stands in for sys.stderr: keeps the stack's REPORT lines, drops everything else."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines: list[tuple[float, float]] = []  # (Duration, Post-Runtime) ms
        self._partial = ""

    def write(self, text: str) -> int:
        with self.lock:
            self._partial += text
            *complete, self._partial = self._partial.split("\n")
            for line in complete:
                match = _REPORT.search(line)
                if match:
                    self.lines.append((float(match["duration"]), float(match["post"])))
        return len(text)

    def flush(self) -> None:
        return None

    def take(self) -> list[tuple[float, float]]:
        with self.lock:
            lines, self.lines = self.lines, []
        return lines


def _pay(session: Any, base: str, key: str, secret: str) -> tuple[float, int]:
    from payments.auth import signed_headers

    raw = json.dumps(payment_body()).encode()
    path = "/api/v1/payments"
    headers = {"Content-Type": "application/json", **signed_headers(key, secret, "POST", path, raw)}
    started = time.perf_counter()
    response = session.post(base + path, data=raw, headers=headers, timeout=60)
    return (time.perf_counter() - started) * 1000, response.status_code


def _child(spec: Json) -> Json:
    import requests

    from local.stack import start_stack

    rounds, per_round, pause_s = int(spec["rounds"]), int(spec["n"]), float(spec["pause_s"])
    sink = Sink()
    reports = _Reports()
    sys.stderr = reports  # the stack writes its REPORT lines here
    stack = start_stack(
        port=0,
        env_overrides={
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
            "OTEL_TRACES_SAMPLER": "always_on",
            "TRACES_EXPORTER_FILE": "",
            "PROMETHEUS_REMOTE_WRITE_URL": sink.url + "/api/v1/write",
        },
        isolated=True,
        scheduled=False,  # no reconciler invocations between the measured payments
    )
    latencies: dict[str, list[float]] = {name: [] for name in VARIANTS}
    per_round_median: dict[str, list[float]] = {name: [] for name in VARIANTS}
    lines: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    statuses: dict[str, dict[str, int]] = {name: {} for name in VARIANTS}
    try:
        session = requests.Session()
        key, secret = stack.emulator.merchant_key, stack.emulator.merchant_secret
        for _ in range(int(spec["warmup"])):  # cold starts, first exports
            _pay(session, stack.api_url, key, secret)
        names = list(VARIANTS)
        for round_no in range(rounds):
            order = names if round_no % 2 == 0 else names[::-1]
            for name in order:
                sink.server.delay_s = VARIANTS[name]
                time.sleep(pause_s)  # exports of the previous round finish; environments idle
                reports.take()
                got = []
                for _ in range(per_round):
                    ms, status = _pay(session, stack.api_url, key, secret)
                    got.append(ms)
                    statuses[name][str(status)] = statuses[name].get(str(status), 0) + 1
                latencies[name] += got
                per_round_median[name].append(median(got))
                time.sleep(0.5)  # the last payment's post-runtime phases end
                lines[name] += reports.take()
        sink.server.delay_s = 0.0
    finally:
        stack.stop()
        sink.stop()
        sys.stderr = sys.__stderr__
    out: Json = {"rounds": rounds, "n_per_round": per_round, "delay_s": DELAY_S, "variants": {}}
    for name in VARIANTS:
        values = latencies[name]
        posts = [p for _, p in lines[name]]
        out["variants"][name] = {
            "n": len(values),
            "p50_ms": median(values),
            "p90_ms": percentile(values, 90),
            "round_p50_ms": per_round_median[name],
            "statuses": statuses[name],
            "invocations": len(lines[name]),
            "post_runtime_p50_ms": median(posts),
            "post_runtime_p99_ms": percentile(posts, 99),
            "post_runtime_max_ms": max(posts, default=float("nan")),
            "response_path_p50_ms": median([d - p for d, p in lines[name]]),
        }
    fast, slow = (out["variants"][name] for name in VARIANTS)
    out["ratio"] = ratio(slow["p50_ms"], fast["p50_ms"])
    out["round_ratio_p50"] = round_ratio(out)
    out["target"] = TARGET
    out["met"] = out["ratio"] <= TARGET
    return out


def round_ratio(result: Json) -> float:
    """Median over rounds of slow/fast round medians: each pair ran back to back, so a
    load burst on the shared machine moves both sides of a pair."""
    fast, slow = (result["variants"][name]["round_p50_ms"] for name in VARIANTS)
    return median([ratio(s, f) for s, f in zip(slow, fast, strict=True)])


HEADERS = [
    "receivers",
    "payments",
    "p50 ms",
    "p90 ms",
    "vs 0 ms",
    "per-round ratio p50",
    "invocations",
    "response path p50 ms",
    "post-runtime p50 ms",
    "post-runtime p99 ms",
    "post-runtime max ms",
    "target",
]


def table_rows(result: Json) -> list[list[Any]]:
    base = result["variants"][next(iter(VARIANTS))]["p50_ms"]
    rows = []
    for n, name in enumerate(VARIANTS):  # results.json sorts keys: the order is VARIANTS'
        e = result["variants"][name]
        first = n == 0
        rows.append(
            [
                name,
                e["n"],
                e["p50_ms"],
                e["p90_ms"],
                f"{ratio(e['p50_ms'], base):.2f}x",
                "" if first else f"{round_ratio(result):.2f}x",
                e["invocations"],
                e["response_path_p50_ms"],
                e["post_runtime_p50_ms"],
                e["post_runtime_p99_ms"],
                e["post_runtime_max_ms"],
                "" if first else f"≤{result['target']}x {'met' if result['met'] else 'MISSED'}",
            ]
        )
    return rows


if __name__ == "__main__":
    if not child_main(sys.argv[1:], _child):
        sys.exit("usage: python -m bench (this module runs as a child)")
