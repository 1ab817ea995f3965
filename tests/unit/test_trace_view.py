"""`local.trace_view` (payctl trace): loading the span file and rendering one trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from local.trace_view import (
    TraceNotFoundError,
    TraceViewError,
    load_spans,
    main,
    normalise_trace_id,
    render_tree,
)
from payments.observability.tracing import JsonLinesSpanExporter

TRACE = "6b0633cf8033c48ef9f3655042b614f5"
OTHER = "6b0633cf0000000000000000000000ff"
MS = 1_000_000


def span(
    span_id: str,
    name: str,
    parent: str | None = None,
    *,
    start: int = 0,
    duration: int = 10,
    kind: str = "INTERNAL",
    service: str = "payment-gateway",
    trace_id: str = TRACE,
    status: str = "UNSET",
    description: str | None = None,
    attributes: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "service": service,
        "kind": kind,
        "start_time_unix_nano": 1_000 * MS + start * MS,
        "end_time_unix_nano": 1_000 * MS + (start + duration) * MS,
        "status": {"code": status, "description": description},
        "attributes": attributes or {},
        "events": events or [],
    }


def payment_trace(service: str | None = None) -> list[dict[str, Any]]:
    """The SPEC §6 tree as the local stack writes it (one process: one resource service)."""

    def svc(real: str) -> str:
        return service or real

    payment = {"merchant_id": "merch_demo", "payment_no": "pay_1", "amount": 1999}
    return [
        # Written in export order (children first), not tree order.
        span(
            "0000000000000007",
            "stripe: POST /v1/payment_intents",
            "0000000000000006",
            start=41,
            duration=3,
            kind="CLIENT",
            service=svc("channel-adapter"),
            attributes={"http.response.status_code": 200, "url.full": "http://x/v1/pi"},
        ),
        span(
            "0000000000000002",
            "RiskCheck",
            "0000000000000001",
            start=2,
            duration=9,
            service=svc("risk-service"),
            attributes={
                "step": "RiskCheck",
                **payment,
                "currency": "USD",
                "risk.decision": "approve",
                "risk.score": 12,
            },
        ),
        span(
            "0000000000000003",
            "risk-service",
            "0000000000000002",
            start=3,
            duration=7,
            kind="SERVER",
            service=svc("risk-service"),
        ),
        span(
            "0000000000000004",
            "CreateOrder",
            "0000000000000001",
            start=20,
            duration=5,
            service=svc("order-service"),
            attributes={"step": "CreateOrder", **payment, "order_no": "ord_1"},
        ),
        span(
            "0000000000000008",
            "order-service",
            "0000000000000004",
            start=21,
            duration=3,
            kind="SERVER",
            service=svc("order-service"),
        ),
        span(
            "0000000000000005",
            "ChannelPayment",
            "0000000000000001",
            start=40,
            duration=6,
            service=svc("channel-adapter"),
            attributes={"step": "ChannelPayment", **payment, "channel.outcome": "succeeded"},
        ),
        span(
            "0000000000000006",
            "channel-adapter",
            "0000000000000005",
            start=40,
            duration=5,
            kind="SERVER",
            service=svc("channel-adapter"),
        ),
        span(
            "0000000000000001",
            "POST /api/v1/payments",
            None,
            start=0,
            duration=50,
            kind="SERVER",
            service=svc("payment-gateway"),
            attributes={"http.response.status_code": 201, "payment_no": "pay_1"},
        ),
        span("00000000000000aa", "POST /api/v1/payments", trace_id=OTHER, kind="SERVER"),
    ]


EXPECTED_TREE = """\
trace 6b0633cf8033c48ef9f3655042b614f5  8 spans  50.0 ms
payment-gateway: POST /api/v1/payments  50.0 ms  status=201 payment_no=pay_1
├─ risk-service: RiskCheck  9.0 ms  merchant_id=merch_demo amount=1999 currency=USD \
risk.decision=approve risk.score=12
│  └─ risk-service: risk-service  7.0 ms
├─ order-service: CreateOrder  5.0 ms  merchant_id=merch_demo order_no=ord_1 amount=1999
│  └─ order-service: order-service  3.0 ms
└─ channel-adapter: ChannelPayment  6.0 ms  merchant_id=merch_demo amount=1999 \
channel.outcome=succeeded
   └─ channel-adapter: channel-adapter  5.0 ms
      └─ channel-adapter: stripe: POST /v1/payment_intents  3.0 ms  [client]  status=200"""


def write(path: Path, spans: list[dict[str, Any]], *extra: str) -> Path:
    lines = [json.dumps(s) for s in spans] + list(extra)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- render_tree


def test_renders_the_spec_tree_with_services_durations_and_key_attributes() -> None:
    assert render_tree(payment_trace(service="payment-gateway"), TRACE) == EXPECTED_TREE


def test_a_real_deployment_keeps_each_spans_own_service() -> None:
    # One resource per Lambda: the same tree, the same names.
    assert render_tree(payment_trace(), TRACE) == EXPECTED_TREE


def test_in_process_spans_inherit_the_service_of_their_lambda() -> None:
    spans = [
        span("0000000000000001", "channel-adapter", kind="SERVER"),
        span("0000000000000002", "stripe: POST /v1/refunds", "0000000000000001", kind="CLIENT"),
        span("0000000000000003", "db", "0000000000000002", service="elsewhere"),
    ]
    lines = render_tree(spans, TRACE).splitlines()
    assert lines[1].startswith("channel-adapter: channel-adapter")
    assert lines[2].startswith("└─ channel-adapter: stripe: POST /v1/refunds")
    assert lines[3].startswith("   └─ elsewhere: db")  # another resource: its own service


def test_error_status_description_and_exception_are_marked() -> None:
    spans = [
        span(
            "0000000000000001",
            "POST /api/v1/payments",
            kind="SERVER",
            status="ERROR",
            description="HTTP 503",
            attributes={"http.response.status_code": 503},
        ),
        span(
            "0000000000000002",
            "ChannelPayment",
            "0000000000000001",
            status="ERROR",
            description="ChannelUnavailable",
            events=[
                {
                    "name": "exception",
                    "attributes": {"exception.type": "payments.errors.ChannelUnavailable"},
                }
            ],
        ),
        span("0000000000000003", "plain failure", "0000000000000001", start=5, status="ERROR"),
    ]
    lines = render_tree(spans, TRACE).splitlines()
    assert lines[0].endswith("3 spans  15.0 ms  3 ERROR")
    assert "ERROR(HTTP 503)  status=503" in lines[1]
    assert "ERROR(ChannelUnavailable)" in lines[2]
    assert lines[2].endswith("exception=payments.errors.ChannelUnavailable")
    assert lines[3].endswith("plain failure  10.0 ms  ERROR")


def test_status_codes_are_shown_on_every_span_identity_attributes_once() -> None:
    spans = [
        span(
            "0000000000000001",
            "POST /api/v1/payments",
            kind="SERVER",
            attributes={"http.response.status_code": 402, "payment_no": "pay_1"},
        ),
        span(
            "0000000000000002",
            "stripe: POST /v1/payment_intents",
            "0000000000000001",
            kind="CLIENT",
            attributes={
                "http.response.status_code": 402,
                "payment_no": "pay_1",
                "payment.decline_code": "generic_decline",
            },
        ),
    ]
    child = render_tree(spans, TRACE).splitlines()[2]
    assert child.endswith("[client]  status=402 decline_code=generic_decline")


def test_orphans_duplicates_and_unfinished_spans() -> None:
    orphan = span("0000000000000002", "RiskCheck", "00000000000000ff", start=1)
    unfinished = span("0000000000000003", "risk-service", "0000000000000002", kind="SERVER")
    unfinished["end_time_unix_nano"] = None
    long_value = span(
        "0000000000000004",
        "CreateOrder",
        "00000000000000ee",
        start=2,
        attributes={"order_no": "o" * 80},
    )
    text = render_tree([orphan, orphan, unfinished, long_value], TRACE)
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {TRACE}  3 spans")
    assert lines[1] == "(parent 00000000000000ff not in the file)"
    assert lines[2].startswith("payment-gateway: RiskCheck  10.0 ms")
    assert lines[3] == "└─ risk-service: risk-service  (unfinished)"
    assert lines[4] == "(parent 00000000000000ee not in the file)"
    assert lines[5].endswith("order_no=" + "o" * 45 + "...")


def test_unknown_and_malformed_trace_ids() -> None:
    with pytest.raises(TraceNotFoundError, match="no spans for trace"):
        render_tree(payment_trace(), "0" * 32)
    with pytest.raises(TraceViewError, match="not a trace id"):
        render_tree(payment_trace(), "pay_1")


@pytest.mark.parametrize(
    "given",
    [
        TRACE,
        TRACE.upper(),
        f"  {TRACE}\n",
        "1-6b0633cf-8033c48ef9f3655042b614f5",
        "Root=1-6b0633cf-8033c48ef9f3655042b614f5;Parent=53995c3f42cd8ad8;Sampled=1",
    ],
)
def test_trace_id_forms(given: str) -> None:
    assert normalise_trace_id(given) == TRACE


# --------------------------------------------------------------------------- load_spans


def test_load_spans_skips_blank_partial_and_foreign_lines(tmp_path: Path) -> None:
    good = payment_trace()
    path = write(tmp_path / "t.jsonl", good, "", "[1, 2]", '{"name": "no ids"}', '{"trace_id": "6b')
    assert load_spans(path) == good


def test_load_spans_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_spans(tmp_path / "absent.jsonl")


def test_reads_what_the_json_lines_exporter_writes(tmp_path: Path) -> None:
    path = tmp_path / "sdk.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "payment-gateway"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(str(path))))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("POST /api/v1/payments", kind=SpanKind.SERVER) as root,
        tracer.start_as_current_span("ChannelPayment", attributes={"step": "ChannelPayment"}),
        tracer.start_as_current_span("channel-adapter", kind=SpanKind.SERVER) as inner,
    ):
        inner.set_status(Status(StatusCode.ERROR, "ChannelUnavailable"))
    provider.shutdown()
    trace_id = format(root.get_span_context().trace_id, "032x")
    lines = render_tree(load_spans(path), trace_id).splitlines()
    assert lines[1].startswith("payment-gateway: POST /api/v1/payments")
    assert lines[2].startswith("└─ channel-adapter: ChannelPayment")
    assert lines[3].startswith("   └─ channel-adapter: channel-adapter")
    assert lines[3].endswith("ERROR(ChannelUnavailable)")


# --------------------------------------------------------------------------- main


def test_main_prints_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "t.jsonl", payment_trace())
    assert main([TRACE, "--file", str(path)]) == 0
    assert capsys.readouterr().out == EXPECTED_TREE + "\n"


def test_main_defaults_to_the_exporter_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACES_EXPORTER_FILE", str(write(tmp_path / "t.jsonl", payment_trace())))
    assert main([TRACE]) == 0
    assert "risk-service: RiskCheck" in capsys.readouterr().out


def test_main_defaults_to_the_local_stack_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRACES_EXPORTER_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".local").mkdir()
    write(tmp_path / ".local" / "traces.jsonl", payment_trace())
    assert main([TRACE]) == 0
    assert capsys.readouterr().out.startswith(f"trace {TRACE}")


def test_main_unknown_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "t.jsonl", payment_trace())
    assert main(["0" * 32, "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "no spans for trace" in err
    assert "9 spans in" in err


def test_main_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([TRACE, "--file", str(tmp_path / "absent.jsonl")]) == 2
    assert "no span file" in capsys.readouterr().err


def test_main_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([TRACE, "--file", str(tmp_path)]) == 2  # a directory
    assert "cannot read" in capsys.readouterr().err


def test_main_bad_trace_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "t.jsonl", payment_trace())
    assert main(["not-a-trace", "--file", str(path)]) == 2
    assert "not a trace id" in capsys.readouterr().err


def test_main_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: payctl trace" in capsys.readouterr().err
    assert main(["--help"]) == 0
