"""Smoke test: every benchmark runs end to end with minimal iterations (no timing assertions)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench import coldstart, load, slow, warm
from bench.__main__ import report, run_extension, run_warm, summarise_instructions, warm_table
from bench.common import (
    FUNCTIONS,
    STRIPE_KEY,
    HungReceiver,
    Sink,
    count_instructions,
    machine,
    percentile,
    run_child,
)
from local.stripe_sim import SimServer, make_app, serve


@pytest.fixture(scope="module")
def sinks() -> Iterator[dict[str, str]]:
    sink = Sink()
    try:
        yield {"rw": sink.url + "/api/v1/write", "otlp": sink.url}
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    server = serve("127.0.0.1", 0, app=make_app(STRIPE_KEY))
    try:
        yield server
    finally:
        server.stop()


def test_percentile_and_machine() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
    assert math.isnan(percentile([], 50))
    assert machine()["nproc"]


def test_everything_runs_and_reports(sinks: dict[str, str], sim: SimServer) -> None:
    hung = HungReceiver()
    try:
        cold = coldstart.run(runs=1, functions=("channel",), callgrind=False)
        warm_fake = run_warm("fake", 1, 2, 1, sinks, lambda _: None)
        real = run_child(
            "bench.warm", {"mode": "real", "config": "metrics", "n": 1, "warmup": 0, "sinks": sinks}
        )
        memory = {
            fn: run_child(
                "bench.memory",
                {"function": fn, "n": 3, "sinks": sinks, "stripe": sim.url, "refund_payments": 1},
            )
            for fn in FUNCTIONS
        }
        exports = run_extension(2, sinks, hung.url)
        series = run_child("bench.series", {})
    finally:
        hung.stop()
    assert "fn:channel" in cold["variants"] and "baseline" in cold["variants"]
    assert set(warm_fake["configs"]) == set(warm.CONFIGS)
    assert all(entry["errors"] == 0 for entry in warm_fake["configs"].values())
    assert real["errors"] == 0 and real["n"] == 1
    assert all(m["errors"] == 0 for m in memory.values())
    assert exports["extension/up"]["n"] == 2 and exports["extension/up"]["spans_lost"] == 0
    assert series["series_after"] < series["series_before"]
    warm_real = {**warm_fake, "configs": {c: dict(e) for c, e in warm_fake["configs"].items()}}
    text = report(
        {
            "machine": machine(),
            "scale": 0.0,
            "cold_start": cold,
            "warm_real": warm_real,
            "warm_fake": warm_fake,
            "memory": memory,
            "extension": exports,
            "series": series,
        }
    )
    assert "Cold start" in text and "response path" in text and "churn" in text
    assert "no monitoring" in warm_table(warm_fake, "fakes")


def test_load_runs_and_verifies() -> None:
    result = load.run(merchants=2, seconds=2.0, max_requests=12)
    assert result["requests"] >= 1
    assert result["verification"]["payments_checked"] >= 1
    assert "Invariants" in load.report(result)


def test_slow_backends_runs_and_reports() -> None:
    result = run_child("bench.slow", {"rounds": 1, "n": 1, "warmup": 1, "pause_s": 0.1})
    assert {name: e["statuses"] for name, e in result["variants"].items()} == {
        name: {"201": 1} for name in slow.VARIANTS
    }
    assert all(e["invocations"] >= 2 for e in result["variants"].values())
    text = report({"machine": machine(), "scale": 0.0, "slow_backends": result})
    assert "Slow backends" in text and "+600 ms" in text


def test_warm_instructions_child_and_summary(sinks: dict[str, str]) -> None:
    """The instruction section's child (final flush, warm-up until sampled), its summary and
    table; the callgrind run itself on a trivial command (valgrind is ~50x slower)."""
    child = run_child(
        "bench.warm",
        {"mode": "fake", "config": "trace10", "n": 2, "warmup": 1, "sinks": sinks,
         "instructions": True},
    )  # fmt: skip
    assert child["errors"] == 0 and child["warmup"] >= 1
    results = {
        (config, n): {"instructions": 1e9 + n * per, "spans": n * spans, "errors": 0, "warmup": 1}
        for config, per, spans in (
            ("none", 1e6, 0),
            ("metrics", 1.004e6, 0),
            ("trace100", 1.03e6, 9),
            ("trace10", 1.01e6, 1.8),
        )
        for n in (2, 12)
    }
    summary = summarise_instructions("real", 2, 12, 1, results)
    configs = summary["configs"]
    assert configs["none"]["per_payment"] == pytest.approx(1e6)
    assert configs["metrics"]["overhead_pct"] == pytest.approx(0.4) and configs["metrics"]["met"]
    assert configs["trace10"]["sampled_payments"] == pytest.approx(2.0)
    text = report({"machine": machine(), "scale": 0.0, "warm_instructions": {"real": summary}})
    assert "instructions per payment" in text and "MISSED" in text
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed")

    def run(prefix: list[str]) -> None:
        subprocess.run(
            [*prefix, sys.executable, "-S", "-c", "pass"], check=True, capture_output=True
        )

    assert count_instructions(run) > 1e6
