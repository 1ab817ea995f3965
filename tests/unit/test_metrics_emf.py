"""Metric API and CloudWatch EMF output."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payments.observability import emf, metrics

SCHEMA = json.loads((Path(__file__).parent / "emf_schema.json").read_text())


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PROMETHEUS_REMOTE_WRITE_URL", "METRICS_NAMESPACE", "METRICS_FLUSH_TIMEOUT_MS"):
        monkeypatch.delenv(var, raising=False)
    metrics.reset()
    metrics.configure("fn-test", "svc-test")


def emitted(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """Flush, then parse and validate every stdout line as an EMF document."""
    metrics.flush()
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    for doc in docs:
        jsonschema.validate(doc, SCHEMA)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                for dim in dimension_set:
                    assert isinstance(doc[dim], str), dim
            for metric in directive["Metrics"]:
                value = doc[metric["Name"]]
                values = value if isinstance(value, list) else [value]
                assert 1 <= len(values) <= 100
                assert all(isinstance(v, int | float) for v in values)
    return docs


def values_of(docs: list[dict[str, Any]], name: str) -> list[float]:
    out: list[float] = []
    for doc in docs:
        if name in doc:
            out += doc[name] if isinstance(doc[name], list) else [doc[name]]
    return out


def test_documents_are_valid_emf_with_service_and_label_dimensions(capsys):
    metrics.PAYMENT_TOTAL.inc(status="success", channel="stripe", currency="USD")
    metrics.PAYMENT_AMOUNT.observe(19.99, currency="USD", channel="stripe")
    metrics.HTTP_REQUEST_DURATION.observe(0.02, method="POST", path="/p", status="201")
    docs = emitted(capsys)
    by_metric = {
        m["Name"]: (d, doc)
        for doc in docs
        for d in doc["_aws"]["CloudWatchMetrics"]
        for m in d["Metrics"]
    }
    directive, doc = by_metric["payment_total"]
    assert directive["Namespace"] == "PaymentGateway"
    assert directive["Dimensions"] == [["service", "status", "channel", "currency"]]
    assert {"Name": "payment_total", "Unit": "Count"} in directive["Metrics"]
    assert doc["service"] == "svc-test" and doc["status"] == "success"
    assert doc["payment_total"] == 1
    assert by_metric["payment_amount"][1]["payment_amount"] == 19.99
    assert {"Name": "http_request_duration_seconds", "Unit": "Seconds"} in by_metric[
        "http_request_duration_seconds"
    ][0]["Metrics"]
    assert isinstance(doc["_aws"]["Timestamp"], int)


def test_one_dimension_set_per_family(capsys):
    for status in ("success", "failed", "duplicate"):
        for currency in ("USD", "JPY"):
            metrics.PAYMENT_TOTAL.inc(status=status, channel="stripe", currency=currency)
    metrics.HTTP_REQUESTS_TOTAL.inc(method="GET", path="/a", status="200")
    metrics.HTTP_REQUEST_DURATION.observe(0.1, method="GET", path="/a", status="200")
    metrics.HTTP_REQUEST_SIZE.observe(100, method="GET", path="/a")
    docs = emitted(capsys)
    sets: dict[str, set[tuple[str, ...]]] = {}
    for doc in docs:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            assert len(directive["Dimensions"]) == 1
            for m in directive["Metrics"]:
                sets.setdefault(m["Name"], set()).add(tuple(directive["Dimensions"][0]))
    assert all(len(s) == 1 for s in sets.values()), sets
    # Different label values need different documents: 6 payment combinations.
    assert sum("payment_total" in d for d in docs) == 6
    assert sorted(values_of(docs, "payment_total")) == [1.0] * 6


def test_histogram_values_split_at_100_per_metric(capsys):
    for i in range(250):
        metrics.PAYMENT_DURATION.observe(i / 1000, operation="create", status="success")
    docs = emitted(capsys)
    sizes = sorted(len(d["payment_duration_seconds"]) for d in docs)
    assert sizes == [50, 100, 100]
    assert sorted(values_of(docs, "payment_duration_seconds")) == [i / 1000 for i in range(250)]


def test_build_splits_at_100_metrics_per_document():
    dims = (("service", "s"),)
    entries = [emf.Entry(f"m{i}", "Count", dims, [1.0]) for i in range(230)]
    docs = emf.build("NS", entries, 123)
    assert [len(d["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for d in docs] == [100, 100, 30]
    for doc in docs:
        jsonschema.validate(doc, SCHEMA)


def test_only_values_since_last_flush(capsys):
    metrics.REFUND_TOTAL.inc(status="success", currency="USD")
    metrics.REFUND_TOTAL.inc(2, status="success", currency="USD")
    metrics.REFUND_AMOUNT.observe(5, currency="USD")
    first = emitted(capsys)
    assert values_of(first, "refund_total") == [3.0]
    assert values_of(first, "refund_amount") == [5.0]
    assert emitted(capsys) == []  # nothing new
    metrics.REFUND_TOTAL.inc(status="success", currency="USD")
    third = emitted(capsys)
    assert values_of(third, "refund_total") == [1.0]
    assert values_of(third, "refund_amount") == []
    # The cumulative state (for Prometheus) is unaffected by EMF flushing.
    assert metrics.snapshot()["refund_total"] == {("success", "USD"): 4.0}


def test_empty_label_value_still_gives_valid_dimension(capsys):
    metrics.REFUND_AMOUNT.observe(1, currency="")
    (doc,) = emitted(capsys)
    assert doc["currency"] == "none"


def test_namespace_from_env(capsys, monkeypatch):
    monkeypatch.setenv("METRICS_NAMESPACE", "Custom/Payments")
    metrics.COLD_STARTS_TOTAL.inc(function="fn")
    docs = emitted(capsys)
    assert [d["_aws"]["CloudWatchMetrics"][0]["Namespace"] for d in docs] == ["Custom/Payments"]


def test_emf_output_file_for_the_local_stack(capsys, monkeypatch, tmp_path):
    target = tmp_path / "emf.jsonl"
    monkeypatch.setenv("EMF_OUTPUT_FILE", str(target))
    metrics.COLD_STARTS_TOTAL.inc(function="fn")
    metrics.flush(5.0)
    assert capsys.readouterr().out == ""
    (doc,) = [json.loads(line) for line in target.read_text().splitlines()]
    assert doc["lambda_cold_starts_total"] == 1


def test_wrong_labels_are_programming_errors():
    with pytest.raises(ValueError, match="payment_total"):
        metrics.PAYMENT_TOTAL.inc(status="success", channel="stripe")
    with pytest.raises(ValueError):
        metrics.PAYMENT_AMOUNT.observe(1, currency="USD", channel="x", extra="y")
    with pytest.raises(ValueError):
        metrics.PAYMENT_TOTAL.inc(-1, status="success", channel="stripe", currency="USD")
    assert metrics.snapshot()["payment_total"] == {}


def test_non_finite_values_are_dropped(capsys):
    metrics.PAYMENT_AMOUNT.observe(math.nan, currency="USD", channel="s")
    metrics.PAYMENT_AMOUNT.observe(math.inf, currency="USD", channel="s")
    metrics.PAYMENT_TOTAL.inc(math.inf, status="success", channel="s", currency="USD")
    assert emitted(capsys) == []


def test_flush_never_raises(monkeypatch, capsys):
    def boom(docs: object) -> None:
        raise OSError("stdout closed")

    monkeypatch.setattr(emf, "write", boom)
    metrics.PAYMENT_TOTAL.inc(status="success", channel="s", currency="USD")
    metrics.flush()  # no exception


def test_declarations_have_units_help_and_buckets():
    names = [m.name for m in metrics.registry()]
    assert len(names) == len(set(names))
    for m in metrics.registry():
        assert m.help and m.prometheus_name.startswith("payment_gateway_")
        if isinstance(m, metrics.Histogram):
            if m.unit == "seconds":
                assert m.buckets[0] == 0.005 and m.buckets[-1] == 10
            elif m.unit == "bytes":
                assert m.buckets[0] == 64 and m.buckets[-1] == 1024 * 1024
            else:
                assert m.buckets[0] == 1 and m.buckets[-1] == 100000
        elif isinstance(m, metrics.Counter):
            assert m.name.endswith("_total")
        else:
            assert isinstance(m, metrics.Gauge) and not m.name.endswith("_total")
    assert metrics.PAYMENT_DURATION.labels == ("operation", "status")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-10, max_value=200000, allow_nan=False), max_size=60))
def test_histogram_buckets_are_cumulative_and_consistent(values):
    metrics.reset()
    for v in values:
        metrics.PAYMENT_AMOUNT.observe(v, currency="EUR", channel="c")
    if not values:
        assert metrics.snapshot()["payment_amount"] == {}
        return
    snap = metrics.snapshot()["payment_amount"][("EUR", "c")]
    counts = [n for _, n in snap.buckets]
    assert counts == sorted(counts)
    assert snap.buckets[-1] == (math.inf, len(values)) and snap.count == len(values)
    assert snap.sum == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-6)
    for bound, n in snap.buckets:
        assert n == sum(v <= bound for v in values)


def test_gauge_exports_its_latest_value_to_emf_and_remote_write_series():
    metrics.reset()
    metrics.PAYMENTS_UNRESOLVED.set(3, kind="payment")
    metrics.PAYMENTS_UNRESOLVED.set(2, kind="payment")
    with metrics._LOCK:
        entries = metrics._emf_entries()
        series, metadata, _ = metrics._collect_series(10_000)
    gauge = [e for e in entries if e.name == "payments_unresolved"]
    assert [list(e.values) for e in gauge] == [[2]]
    name = "payment_gateway_payments_unresolved"
    named = [s for s in series if dict(s.labels)["__name__"] == name]
    assert len(named) == 1 and named[0].samples == ((2.0, 10_000),)
    assert any(m.family == "payment_gateway_payments_unresolved" and m.type == 2 for m in metadata)
    assert metrics.snapshot()["payments_unresolved"] == {("payment",): 2.0}
    metrics.reset()
