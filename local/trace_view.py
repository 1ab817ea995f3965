"""`payctl trace <trace_id> [--file .local/traces.jsonl]`: one trace as a span tree.

Reads the JSON-lines span file the local stack writes (`TRACES_EXPORTER_FILE`, one span per
line as `payments.observability.tracing.JsonLinesSpanExporter` writes it) and prints:

    trace 6789abcd...  9 spans  412.3 ms
    payment-gateway: POST /api/v1/payments  412.3 ms  status=201 payment_no=pay_...
    ├─ payment-gateway: RiskCheck  40.2 ms  risk.decision=approve risk.score=10 ...
    │  └─ risk-service: risk-service  31.0 ms
    ...

Service names: locally every function runs in one process, whose spans all carry the
resource `service.name` of the first function set up. A Lambda's SERVER span is named after
its service (`instrument()`), so a span inherits the service of its nearest such ancestor
recorded by the same process; spans whose resource differs from their parent's (a real
deployment) keep their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_FILE = ".local/traces.jsonl"

# Attributes worth a glance, in display order (short label, attribute key).
KEY_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("status", "http.response.status_code"),
    ("merchant_id", "merchant_id"),
    ("payment_no", "payment_no"),
    ("order_no", "order_no"),
    ("amount", "amount"),
    ("currency", "currency"),
    ("risk.decision", "risk.decision"),
    ("risk.score", "risk.score"),
    ("channel.outcome", "channel.outcome"),
    ("decline_code", "payment.decline_code"),
    ("error.type", "error.type"),
    ("resend", "http.request.resend_count"),
)

# Identity attributes printed once per branch (the steps repeat the payment's).
INHERITED = frozenset({"merchant_id", "payment_no", "order_no", "amount", "currency"})

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_XRAY = re.compile(r"^1-([0-9a-f]{8})-([0-9a-f]{24})$")
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class TraceViewError(ValueError):
    """A trace id or file the viewer cannot use."""


class TraceNotFoundError(TraceViewError):
    """No span of that trace in the file."""


# --------------------------------------------------------------------------- loading


def load_spans(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every span object of a JSON-lines file; blank, partial or non-object lines skipped.

    The exporter appends while the stack runs, so the last line may be half written.
    Raises FileNotFoundError when the file does not exist.
    """
    spans: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("span_id") and record.get("trace_id"):
                spans.append(record)
    return spans


def normalise_trace_id(trace_id: str) -> str:
    """32 lowercase hex; also accepts an X-Ray id `1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy`."""
    raw = trace_id.strip().lower()
    if raw.startswith("root="):
        raw = raw[5:].split(";", 1)[0]
    if match := _XRAY.match(raw):
        raw = match.group(1) + match.group(2)
    raw = raw.replace("-", "")
    if not _HEX32.match(raw):
        raise TraceViewError(f"not a trace id: {trace_id!r} (32 hex digits expected)")
    return raw


# --------------------------------------------------------------------------- rendering


def _duration_ms(span: Mapping[str, Any]) -> float | None:
    start, end = span.get("start_time_unix_nano"), span.get("end_time_unix_nano")
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        return None
    return max(0.0, (end - start) / 1e6)


def _is_service_span(span: Mapping[str, Any]) -> bool:
    """A Lambda's own SERVER span (instrument names it after the service)."""
    return span.get("kind") == "SERVER" and bool(_SERVICE_NAME.match(str(span.get("name", ""))))


def _status(span: Mapping[str, Any]) -> tuple[str, str | None]:
    status = span.get("status")
    if isinstance(status, Mapping):
        return str(status.get("code") or "UNSET"), status.get("description") or None
    return str(status or "UNSET"), None


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= 48 else text[:45] + "..."


def _key_attributes(span: Mapping[str, Any], seen: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) of the key attributes an ancestor line has not shown already."""
    attributes = span.get("attributes")
    if not isinstance(attributes, Mapping):
        return []
    return [
        (label, attributes[key])
        for label, key in KEY_ATTRIBUTES
        if key in attributes
        and attributes[key] not in (None, "")
        and seen.get(key) != attributes[key]
    ]


def _label(span: Mapping[str, Any], service: str, seen: Mapping[str, Any]) -> str:
    parts = [f"{service}: {span.get('name', '?')}"]
    duration = _duration_ms(span)
    parts.append(f"{duration:.1f} ms" if duration is not None else "(unfinished)")
    kind = span.get("kind")
    if kind == "CLIENT":
        parts.append("[client]")
    code, description = _status(span)
    if code == "ERROR":
        parts.append(f"ERROR({description})" if description else "ERROR")
    shown = [f"{label}={_format_value(value)}" for label, value in _key_attributes(span, seen)]
    if shown:
        parts.append(" ".join(shown))
    exceptions = [
        str((event.get("attributes") or {}).get("exception.type") or "exception")
        for event in span.get("events") or []
        if isinstance(event, Mapping) and event.get("name") == "exception"
    ]
    if exceptions:
        parts.append("exception=" + ",".join(exceptions))
    return "  ".join(parts)


def _sort_key(span: Mapping[str, Any]) -> tuple[float, str]:
    start = span.get("start_time_unix_nano")
    return (float(start) if isinstance(start, int | float) else 0.0, str(span.get("span_id")))


def render_tree(spans: Iterable[Mapping[str, Any]], trace_id: str) -> str:
    """The spans of `trace_id` as an indented tree (children by start time).

    Raises TraceViewError when the trace id is malformed or has no span.
    """
    wanted = normalise_trace_id(trace_id)
    by_id: dict[str, Mapping[str, Any]] = {}
    for span in spans:
        if str(span.get("trace_id", "")).lower() == wanted:
            by_id.setdefault(str(span.get("span_id")), span)  # a span exported twice once
    if not by_id:
        raise TraceNotFoundError(f"no spans for trace {wanted}")

    children: dict[str, list[Mapping[str, Any]]] = {}
    roots: list[Mapping[str, Any]] = []
    for span in by_id.values():
        parent = span.get("parent_span_id")
        if parent and str(parent) in by_id:
            children.setdefault(str(parent), []).append(span)
        else:
            roots.append(span)
    roots.sort(key=_sort_key)
    for siblings in children.values():
        siblings.sort(key=_sort_key)

    starts = [s["start_time_unix_nano"] for s in by_id.values() if s.get("start_time_unix_nano")]
    ends = [s["end_time_unix_nano"] for s in by_id.values() if s.get("end_time_unix_nano")]
    total = f"  {(max(ends) - min(starts)) / 1e6:.1f} ms" if starts and ends else ""
    errors = sum(1 for s in by_id.values() if _status(s)[0] == "ERROR")
    header = f"trace {wanted}  {len(by_id)} spans{total}"
    if errors:
        header += f"  {errors} ERROR"
    lines = [header]

    def service_of(span: Mapping[str, Any], parent_raw: str | None, parent_eff: str | None) -> str:
        raw = str(span.get("service") or "?")
        if _is_service_span(span):
            return str(span["name"])
        attributes = span.get("attributes")
        if isinstance(attributes, Mapping) and "step" in attributes:
            # A workflow step span is opened by the task's Lambda, around its SERVER span.
            lambdas = [c for c in children.get(str(span.get("span_id")), []) if _is_service_span(c)]
            if len(lambdas) == 1 and lambdas[0].get("service") == span.get("service"):
                return str(lambdas[0]["name"])
        if parent_eff is not None and parent_raw == raw:
            return parent_eff  # same process: the nearest Lambda's service
        return raw

    def walk(
        span: Mapping[str, Any],
        prefix: str,
        connector: str,
        parent: tuple[str | None, str | None],
        seen: Mapping[str, Any],
    ) -> None:
        service = service_of(span, *parent)
        lines.append(prefix + connector + _label(span, service, seen))
        attributes = span.get("attributes")
        if isinstance(attributes, Mapping):
            seen = {**seen, **{key: attributes[key] for key in INHERITED if key in attributes}}
        kids = children.get(str(span.get("span_id")), [])
        if connector == "":
            child_prefix = prefix
        else:
            child_prefix = prefix + ("   " if connector == "└─ " else "│  ")
        raw = str(span.get("service") or "?")
        for index, child in enumerate(kids):
            last = index == len(kids) - 1
            walk(child, child_prefix, "└─ " if last else "├─ ", (raw, service), seen)

    for root in roots:
        parent = root.get("parent_span_id")
        if parent:
            lines.append(f"(parent {parent} not in the file)")
        walk(root, "", "", (None, None), {})
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _default_file() -> str:
    return os.environ.get("TRACES_EXPORTER_FILE") or DEFAULT_FILE


def main(argv: list[str] | None = None) -> int:
    """`payctl trace <trace_id> [--file PATH]`: 0 printed, 1 no such trace, 2 usage/file."""
    parser = argparse.ArgumentParser(
        prog="payctl trace",
        description="Show one trace of the local stack as a span tree.",
    )
    parser.add_argument("trace_id", help="32 hex digits (the X-Trace-ID response header)")
    parser.add_argument(
        "--file",
        default=None,
        help=f"JSON-lines span file (default: $TRACES_EXPORTER_FILE or {DEFAULT_FILE})",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else 2
    path = Path(args.file or _default_file())
    try:
        spans = load_spans(path)
    except FileNotFoundError:
        print(f"error: no span file at {path} (is the local stack running?)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        print(render_tree(spans, args.trace_id))
    except TraceNotFoundError as exc:
        print(f"error: {exc} ({len(spans)} spans in {path})", file=sys.stderr)
        return 1
    except TraceViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
