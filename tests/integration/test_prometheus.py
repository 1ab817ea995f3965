"""SPEC §5 end to end: the functions remote-write to a real Prometheus, whose PromQL, rules
and Grafana panels then give exactly the values the traffic implies.

Known traffic through the local stack (real HTTP, signed requests): 10 payment attempts =
7 successes (5 USD, 2 JPY) + 2 declines + 1 risk rejection, then refunds (partial, full,
exceeding). Queries run at the timestamp of the last remote write: there `rate()` does no
extrapolation (and the leading 0 sample of every counter stops it extrapolating backwards),
so every ratio is the exact ratio of the counts.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from local.stack import StackHandle, start_stack
from payments import observability
from payments.auth import signed_headers
from payments.observability import metrics

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "observability" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "observability" / "grafana" / "payments-dashboard.json"
PROMETHEUS = shutil.which("prometheus")

SPEC_QUERIES = {
    "success_ratio": 'sum(rate(payment_gateway_payment_total{status="success"}[5m])) '
    "/ sum(rate(payment_gateway_payment_total[5m]))",
    "p95": "histogram_quantile(0.95, rate(payment_gateway_payment_duration_seconds_bucket[5m]))",
    "avg_seed": "avg(payment_gateway_payment_amount) by (channel, currency)",
    "http_5xx_ratio": 'sum(rate(payment_gateway_http_requests_total{status=~"5.."}[5m])) '
    "/ sum(rate(payment_gateway_http_requests_total[5m]))",
    "risk_ratio": 'sum(rate(payment_gateway_payment_total{status="risk_rejected"}[5m])) '
    "/ sum(rate(payment_gateway_payment_total[5m]))",
}
MEAN_AMOUNT = (
    "sum by (channel, currency) (rate(payment_gateway_payment_amount_sum[5m]))"
    " / sum by (channel, currency) (rate(payment_gateway_payment_amount_count[5m]))"
)

USD_SUCCESS = (1999, 1000, 2500, 500, 4001)  # minor units: cents
JPY_SUCCESS = (500, 1500)  # JPY has no minor unit: 500 yen stays 500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.url}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=10
        )
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body)
        return list(body["data"]["result"])

    def scalar(self, expr: str, at: float) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


def _start_prometheus(tmp: Path) -> Prometheus:
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {json.dumps(str(RULES))}\n"
    )
    assert PROMETHEUS is not None
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        log = (tmp / "prometheus.log").open("wb")
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-remote-write-receiver",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return Prometheus(url, process)
            except requests.RequestException:
                pass
            time.sleep(0.1)
        _stop(process)
    raise RuntimeError("prometheus did not start:\n" + (tmp / "prometheus.log").read_text())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (make prometheus installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="prom-it-"))
    try:
        prom = _start_prometheus(tmp)
        try:
            yield prom
        finally:
            _stop(prom.process)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(prometheus: Prometheus) -> Iterator[StackHandle]:
    saved_env = dict(os.environ)  # the in-process runtime applies the functions' env globally
    saved_initialised = observability._initialised
    handle = start_stack(
        template_path=str(ROOT / "template.yaml"),
        env_overrides={
            "PROMETHEUS_REMOTE_WRITE_URL": f"{prometheus.url}/api/v1/write",
            "METRICS_FLUSH_TIMEOUT_MS": "2000",
        },
    )
    try:
        yield handle
    finally:
        handle.stop()
        metrics.reset()
        observability._initialised = saved_initialised
        os.environ.clear()
        os.environ.update(saved_env)


def _post(stack: StackHandle, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        **signed_headers("mk_demo", "sk_demo_secret", "POST", path, body),
    }
    response = requests.post(stack.api_url + path, data=body, headers=headers, timeout=30)
    return response.status_code, response.json()


def _pay(stack: StackHandle, amount: int, currency: str = "USD", **kw: Any) -> tuple[int, Any]:
    payload: dict[str, Any] = {
        "merchant_order_no": f"prom-{uuid.uuid4().hex[:12]}",
        "amount": amount,
        "currency": currency,
        "payment_method": kw.pop("payment_method", "pm_card_visa"),
        "customer": {
            "id": f"cus_{uuid.uuid4().hex[:8]}",
            "email": "jane@example.com",
            "country": kw.pop("country", "US"),
        },
    }
    return _post(stack, "/api/v1/payments", payload)


def _deliver_everything() -> float:
    """Wait for in-flight writes, write the final state; its timestamp in seconds."""
    for _ in range(5):
        if metrics._state.inflight is not None:
            metrics._state.inflight.join(10)
        if metrics._state.delivered_generation == metrics._state.generation:
            return metrics._state.last_timestamp_ms / 1000
        metrics.flush(timeout_seconds=10)
    raise AssertionError(f"remote write not delivered ({metrics.remote_write_failures} failures)")


def _wait_for_webhook_hints(timeout: float = 20.0) -> None:
    """Until a webhook event was handled and its hint reconciled (both counted)."""
    deadline = time.monotonic() + timeout
    while True:
        state = metrics.snapshot()
        if state["webhook_events_total"] and state["reconciliation_total"]:
            return
        assert time.monotonic() < deadline, "no webhook reached the stack"
        time.sleep(0.1)


@dataclass
class Traffic:
    at: float  # timestamp of the last remote write (seconds)


@pytest.fixture(scope="module")
def traffic(stack: StackHandle) -> Traffic:
    metrics.reset()  # only this test's traffic in the cumulative state
    observability._initialised = False  # record the cold start again after the reset
    paid: list[str] = []
    for amount in USD_SUCCESS:
        status, body = _pay(stack, amount)
        assert status == 201, body
        paid.append(body["payment_no"])
    for amount in JPY_SUCCESS:
        status, body = _pay(stack, amount, "JPY")
        assert status == 201, body
    for _ in range(2):
        status, body = _pay(stack, 1200, payment_method="pm_card_chargeDeclined")
        assert status == 402, body
    status, body = _pay(stack, 1300, country="KP")
    assert status == 402 and body["error"]["code"] == "risk_rejected", body

    refunds = f"/api/v1/payments/{paid[0]}/refunds"
    assert _post(stack, refunds, {"amount": 999})[0] == 201  # partial_success: 9.99 USD
    assert _post(stack, refunds, {"amount": 1000})[0] == 201  # success: 10.00 USD
    assert _post(stack, f"/api/v1/payments/{paid[1]}/refunds", {"amount": 5000})[0] == 422

    # Reconciliation data arrives asynchronously (the simulator's webhook worker, the
    # reconciler's schedule): wait for the first webhook hints and run the reconciler once,
    # so the Grafana reconciliation panels have data at `at` too.
    _wait_for_webhook_hints()
    _, error = stack.emulator.runtime.invoke("ReconcilerFunction", {"source": "aws.scheduler"})
    assert error is None, error

    at = _deliver_everything()
    assert metrics.remote_write_failures == 0
    return Traffic(at)


def test_spec_queries_return_what_the_traffic_implies(
    prometheus: Prometheus, traffic: Traffic
) -> None:
    at = traffic.at
    assert prometheus.scalar(SPEC_QUERIES["success_ratio"], at) == pytest.approx(0.7, abs=1e-12)
    assert prometheus.scalar(SPEC_QUERIES["risk_ratio"], at) == pytest.approx(0.1, abs=1e-12)
    # No 5xx happened, so no 5xx series exists: the SPEC query's numerator is an empty
    # vector and so is the ratio. The dashboard/rule form (`or vector(0)`) reads 0.
    assert prometheus.query(SPEC_QUERIES["http_5xx_ratio"], at) == []
    zero_safe = SPEC_QUERIES["http_5xx_ratio"].replace("[5m])) /", "[5m])) or vector(0)) /")
    assert prometheus.scalar("(" + zero_safe, at) == 0.0
    assert prometheus.scalar("sum(rate(payment_gateway_http_requests_total[5m]))", at) > 0

    p95 = prometheus.query(SPEC_QUERIES["p95"], at)
    assert {r["metric"]["operation"] for r in p95} == {"create", "refund"}
    assert all(math.isfinite(float(r["value"][1])) and float(r["value"][1]) > 0 for r in p95)

    # The seed query names no series (a histogram only has _bucket/_sum/_count) ...
    assert prometheus.query(SPEC_QUERIES["avg_seed"], at) == []
    # ... the _sum/_count form gives the exact mean in major units, JPY undivided.
    means = {
        (r["metric"]["channel"], r["metric"]["currency"]): float(r["value"][1])
        for r in prometheus.query(MEAN_AMOUNT, at)
    }
    usd = sum(USD_SUCCESS) / 100 / len(USD_SUCCESS)
    jpy = sum(JPY_SUCCESS) / len(JPY_SUCCESS)
    assert means == {
        ("stripe", "USD"): pytest.approx(usd, rel=1e-12),
        ("stripe", "JPY"): pytest.approx(jpy, rel=1e-12),
    }


def test_counts_and_labels(prometheus: Prometheus, traffic: Traffic) -> None:
    at = traffic.at
    by_status = {
        r["metric"]["status"]: float(r["value"][1])
        for r in prometheus.query(
            "sum by (status) (increase(payment_gateway_payment_total[5m]))", at
        )
    }
    assert by_status == {"success": 7.0, "failed": 2.0, "risk_rejected": 1.0}
    refunds = {
        r["metric"]["status"]: float(r["value"][1])
        for r in prometheus.query(
            "sum by (status) (increase(payment_gateway_refund_total[5m]))", at
        )
    }
    assert refunds == {"partial_success": 1.0, "success": 1.0, "amount_exceeded": 1.0}
    refunded = prometheus.scalar('sum(payment_gateway_refund_amount_sum{currency="USD"})', at)
    assert refunded == pytest.approx(19.99, rel=1e-12)
    # Routes are templates, never raw paths.
    paths = {
        r["metric"]["path"] for r in prometheus.query("payment_gateway_http_requests_total", at)
    }
    # The simulator's webhooks reach the stack too (asynchronously: maybe not yet).
    merchant = {"/api/v1/payments", "/api/v1/payments/{payment_no}/refunds"}
    assert merchant <= paths <= merchant | {"/webhooks/stripe"}
    jpy = prometheus.scalar('sum(payment_gateway_payment_amount_sum{currency="JPY"})', at)
    assert jpy == 2000.0
    cold = prometheus.scalar("sum(payment_gateway_lambda_cold_starts_total)", at)
    assert cold >= 1


def _grafana_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = re.sub(r"\$__(rate_)?interval", "5m", target["expr"])
            exprs.append((panel["title"], expr))
    return exprs


def test_every_grafana_panel_returns_data(prometheus: Prometheus, traffic: Traffic) -> None:
    _wait_for_rules(prometheus, traffic.at)
    empty = [
        (title, expr)
        for title, expr in _grafana_exprs()
        if not prometheus.query(expr, traffic.at + 2)  # + 2 s: recording rules have run
    ]
    assert not empty
    # The reconciler's backlog gauges, as the alerts read them: both kinds, nothing left.
    backlog = prometheus.query("max by (kind) (payment_gateway_payments_unresolved)", traffic.at)
    assert {r["metric"]["kind"]: float(r["value"][1]) for r in backlog} == {
        "payment": 0.0,
        "refund": 0.0,
    }


def _wait_for_rules(prometheus: Prometheus, after: float) -> list[dict[str, Any]]:
    """Rule groups, once each has evaluated after the data arrived."""
    deadline = time.monotonic() + 15
    while True:
        groups = requests.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        done = groups and all(
            g["rules"] and _epoch(g["lastEvaluation"]) > after + 1 for g in groups
        )
        if done or time.monotonic() > deadline:
            return list(groups)
        time.sleep(0.5)


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    stamp = re.sub(r"(\.\d{6})\d*", r"\1", rfc3339.replace("Z", "+00:00"))
    return datetime.fromisoformat(stamp).timestamp()


def test_every_rule_evaluates_without_error(prometheus: Prometheus, traffic: Traffic) -> None:
    groups = _wait_for_rules(prometheus, traffic.at)
    assert {g["name"] for g in groups} == {
        "payment-gateway.recording",
        "payment-gateway.slo",
        "payment-gateway.alerts",
        "payment-gateway.slo-alerts",
    }
    for group in groups:
        assert _epoch(group["lastEvaluation"]) > traffic.at + 1, group["name"]
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
            assert not rule.get("lastError"), rule
    # The recording rules see the traffic (extrapolated rates: ratios only approximately).
    ratio = prometheus.scalar("payment_gateway:payment_success:ratio_rate5m", traffic.at + 2)
    assert 0.6 < ratio < 0.8


def test_make_observe_starts_prometheus_and_alertmanager_with_the_rules(tmp_path: Path) -> None:
    from local.observe import start_monitoring, stop_process

    if shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None:
        pytest.skip("alertmanager not installed (make prometheus installs it)")
    prom_port, am_port = _free_port(), _free_port()
    processes = start_monitoring(prom_port, am_port, data=tmp_path)
    try:
        url = f"http://127.0.0.1:{prom_port}"
        deadline = time.monotonic() + 15
        while True:
            ams = requests.get(f"{url}/api/v1/alertmanagers", timeout=5).json()["data"]
            if ams["activeAlertmanagers"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ams["activeAlertmanagers"] == [{"url": f"http://127.0.0.1:{am_port}/api/v2/alerts"}]
        groups = requests.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert len(groups) == 4
        # the remote-write receiver is on: an empty (invalid) body is a 400, not a 404
        assert requests.post(f"{url}/api/v1/write", data=b"", timeout=5).status_code == 400
    finally:
        for process in reversed(processes):
            stop_process(process)
    assert all(p.poll() is not None for p in processes)
