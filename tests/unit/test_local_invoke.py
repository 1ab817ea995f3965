"""`python -m local.invoke`: one function, one event, fresh emulator; exit codes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from local.invoke import load_event, main, refresh_signature

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the template, functions and events/sign.py are repo-relative


def test_risk_check_event_prints_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["risk_check", "events/risk_check.json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] in ("approve", "review", "reject")


def test_stale_api_event_is_resigned(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["CreatePaymentFunction", "events/create_payment_success.json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["statusCode"] == 201, result


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope", "events/health.json"]) == 2
    assert "unknown function 'nope'" in capsys.readouterr().err
    assert main(["order", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["order", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    bad.write_text("[1]")
    assert main(["order", str(bad)]) == 2
    assert main(["only-one"]) == 2


def test_function_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    event = tmp_path / "empty.json"
    event.write_text("{}")  # not an order task: the handler's input model refuses it
    assert main(["order", str(event)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert {"errorType", "errorMessage", "stackTrace"} <= out.keys()
    assert out["errorType"] == "ValidationError"


# The five sample events that name a payment or order a fresh emulator does not have.
SEEDED = [
    ("create_payment", "get_payment.json", 200),
    ("create_payment", "get_order.json", 200),
    ("refund", "refund_partial.json", 201),
    ("order", "order_mark_paid.json", "paid"),
    ("order", "order_cancel.json", "cancelled"),
]


@pytest.mark.parametrize(("fn", "event", "expected"), SEEDED)
def test_events_get_what_they_name_seeded(
    fn: str, event: str, expected: int | str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([fn, f"events/{event}"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is the result JSON and nothing else
    got = result.get("statusCode", result.get("status"))
    assert got == expected, result
    assert "seeded " in captured.err


def test_webhook_event_finds_its_payment(capsys: pytest.CaptureFixture[str]) -> None:
    # The signed provider event names pay_7f3c... in its metadata: seeded, it is processed
    # (the payment already settled), not "ignored" as an unknown payment would be.
    assert main(["webhooks", "events/webhook_payment_intent_succeeded.json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["statusCode"] == 200, result
    assert json.loads(result["body"])["result"] == "processed"
    assert "seeded payment pay_7f3c" in captured.err


# Every other sample event, each with the function it is for: they need nothing seeded.
UNSEEDED = {
    "channel_payment.json": "channel",
    "create_payment_declined.json": "create_payment",
    "create_payment_invalid_currency.json": "create_payment",
    "create_payment_success.json": "create_payment",
    "health.json": "create_payment",
    "order_create.json": "order",
    "reconciler_scheduled.json": "reconciler",
    "risk_check.json": "risk_check",
}


def test_every_sample_event_is_covered_here() -> None:
    names = {p.name for p in (ROOT / "events").glob("*.json")}
    covered = {e for _, e, _ in SEEDED} | set(UNSEEDED) | {"webhook_payment_intent_succeeded.json"}
    assert names == covered


@pytest.mark.parametrize(("event", "fn"), sorted(UNSEEDED.items()))
def test_other_sample_events_run_in_a_fresh_state(
    event: str, fn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([fn, f"events/{event}"]) == 0
    result = json.loads(capsys.readouterr().out)  # only the result JSON on stdout
    status = result.get("statusCode")
    # API events answer as the sample intends (201, 402 declined, 400 currency, 200 health);
    # never a 404 for something the event names, never a 5xx.
    assert status is None or status in (200, 201, 400, 402), result
    assert "errorType" not in result, result


def test_without_seeding_those_events_find_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-seed", "create_payment", "events/get_payment.json"]) == 0
    assert json.loads(capsys.readouterr().out)["statusCode"] == 404
    assert main(["--no-seed", "order", "events/order_cancel.json"]) == 1


def test_refresh_signature_only_for_the_demo_key() -> None:
    stale = {
        "headers": {"x-api-key": "mk_demo", "x-timestamp": "1"},
        "rawPath": "/x",
        "requestContext": {"http": {"method": "GET", "path": "/x"}},
    }
    fresh = refresh_signature(stale, "mk_demo", "sk_demo_secret")
    assert abs(int(fresh["headers"]["x-timestamp"]) - time.time()) < 5
    assert len(fresh["headers"]["x-signature"]) == 64
    other = {"headers": {"x-api-key": "mk_other", "x-timestamp": "1"}}
    assert refresh_signature(other, "mk_demo", "s") is other
    assert refresh_signature({"body": "x"}, "mk_demo", "s") == {"body": "x"}


def test_load_event_object() -> None:
    assert load_event("events/health.json")["version"] == "2.0"
