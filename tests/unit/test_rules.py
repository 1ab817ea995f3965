"""Prometheus rules (observability/prometheus): promtool check + unit tests (SPEC §5)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "observability" / "prometheus"
RULES = PROM / "rules.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (make prometheus installs it)"
)

SEED_ALERTS = {
    # name: (threshold in the expression, for, severity)
    "HighPaymentFailureRate": ("> 0.05", "5m", "critical"),
    "HighPaymentLatency": ("> 5", "10m", "warning"),
    "HighRiskRejectionRate": ("> 0.20", "15m", "warning"),
    "HighHTTPErrorRate": ("> 0.01", "5m", "critical"),
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def _alerts() -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                out.setdefault(rule["alert"], []).append(rule)
    return out


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests() -> None:
    assert RULE_TESTS
    result = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    result = _promtool("check", "config", str(ROOT / "observability" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed")
def test_alertmanager_config_is_valid() -> None:
    amtool = shutil.which("amtool")
    assert amtool is not None
    result = subprocess.run(
        [amtool, "check-config", str(ROOT / "observability" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_seed_alerts_match_the_spec() -> None:
    alerts = _alerts()
    for name, (threshold, duration, severity) in SEED_ALERTS.items():
        (rule,) = alerts[name]
        assert threshold in str(rule["expr"]), name
        assert rule["for"] == duration, name
        assert rule["labels"] == {"severity": severity}, name


def test_every_alert_is_annotated_and_tested() -> None:
    tested = "\n".join(path.read_text() for path in RULE_TESTS)
    for name, rules in _alerts().items():
        assert f"alertname: {name}" in tested, f"{name} has no promtool test"
        for rule in rules:
            annotations = rule["annotations"]
            assert isinstance(annotations, dict)
            assert {"summary", "description", "runbook_url"} <= annotations.keys(), name
            assert str(annotations["runbook_url"]).startswith("https://"), name
            labels = rule["labels"]
            assert isinstance(labels, dict) and labels["severity"] in {"critical", "warning"}


def test_burn_rate_alerts_cover_every_slo_and_window() -> None:
    burns = {
        (str(r["labels"]["slo"]), str(r["labels"]["window"]))  # type: ignore[index]
        for name, rules in _alerts().items()
        if name.endswith("ErrorBudgetBurn")
        for r in rules
    }
    assert burns == {
        (slo, window)
        for slo in ("payment", "latency", "availability")
        for window in ("1h", "6h", "1d", "3d")
    }


def _template() -> dict[str, Any]:
    loader_class: Any = type("Loader", (yaml.SafeLoader,), {})

    def tag(loader: Any, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_mapping(node)

    loader_class.add_multi_constructor("!", tag)
    loaded: dict[str, Any] = yaml.load((ROOT / "template.yaml").read_text(), Loader=loader_class)  # noqa: S506
    return loaded


def test_cloudwatch_alarms_mirror_the_seed_alerts() -> None:
    resources = _template()["Resources"]
    expected = {  # alarm: (threshold %, consecutive 1-minute periods)
        "HighPaymentFailureRateAlarm": (5, 5, "status = 'failed'"),
        "HighRiskRejectionRateAlarm": (20, 15, "status = 'risk_rejected'"),
        "HighHTTPErrorRateAlarm": (1, 5, "status LIKE '5%'"),
    }
    for name, (threshold, periods, where) in expected.items():
        props = resources[name]["Properties"]
        assert (props["Threshold"], props["EvaluationPeriods"]) == (threshold, periods), name
        assert props["DatapointsToAlarm"] == periods
        bad, total, ratio = props["Metrics"]
        assert where in bad["Expression"] and "WHERE" not in total["Expression"]
        # EMF dimension sets (payments.observability.emf): service first, then the labels
        assert "${MetricsNamespace}" in bad["Expression"]
        assert ratio["Expression"] == "100 * bad / total" and ratio["ReturnData"] is True
    latency = resources["HighPaymentLatencyAlarm"]["Properties"]
    assert latency["ExtendedStatistic"] == "p99" and latency["Threshold"] == 5
    assert latency["EvaluationPeriods"] == 10
    assert [d["Name"] for d in latency["Dimensions"]] == ["service", "operation", "status"]


def test_cloudwatch_dashboard_body_is_json_with_every_panel() -> None:
    body = _template()["Resources"]["PaymentsDashboard"]["Properties"]["DashboardBody"]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    titles = " | ".join(w["properties"]["title"] for w in widgets)
    for panel in (
        "success rate",
        "P50 / P95 / P99",
        "volume by channel",
        "latency",
        "5xx",
        "cold starts",
        "Refunds",
        "Average payment amount",
    ):
        assert panel in titles, panel
