"""payctl: the merchant CLI. Signs requests like a merchant integration would.

    bin/payctl pay --amount 1999 --currency USD --payment-method pm_card_visa
    bin/payctl get pay_...          bin/payctl order ord_...
    bin/payctl refund pay_... --amount 500
    bin/payctl trace <trace_id>     (span tree from the local stack's trace file)

Environment: PAYMENTS_URL (default http://127.0.0.1:$PAYMENTS_PORT, the port `make run`
uses, 3000 when unset), PAYMENTS_KEY / PAYMENTS_SECRET (default the local demo merchant
mk_demo / sk_demo_secret). A bad URL or port is a one-line error (exit 2), not a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from payments.auth import signed_headers


class UsageError(Exception):
    """A bad setting; the message is the one line payctl prints."""


def base_url(environ: Mapping[str, str]) -> str:
    """PAYMENTS_URL, else the local stack on PAYMENTS_PORT (what `make run` listens on)."""
    url = environ.get("PAYMENTS_URL")
    if url:
        parts = urlsplit(url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise UsageError(f"PAYMENTS_URL must be http(s)://host[:port], not {url!r}")
        return url.rstrip("/")
    port = environ.get("PAYMENTS_PORT", "3000")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise UsageError(f"PAYMENTS_PORT must be a port number (1-65535), not {port!r}")
    return f"http://127.0.0.1:{int(port)}"


def _send(method: str, path: str, body: dict[str, Any] | None, idempotency_key: str | None) -> int:
    base = base_url(os.environ)
    key = os.environ.get("PAYMENTS_KEY", os.environ.get("LOCAL_MERCHANT_KEY", "mk_demo"))
    secret = os.environ.get(
        "PAYMENTS_SECRET", os.environ.get("LOCAL_MERCHANT_SECRET", "sk_demo_secret")
    )
    raw = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
    headers = {"Content-Type": "application/json", **signed_headers(key, secret, method, path, raw)}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    try:
        response = requests.request(method, base + path, data=raw, headers=headers, timeout=35)
    except requests.ConnectionError:
        print(f"payctl: cannot reach {base} (is `make run` running?)", file=sys.stderr)
        return 2
    except requests.RequestException as exc:
        print(f"payctl: request to {base} failed: {type(exc).__name__}", file=sys.stderr)
        return 2
    status_line = (
        f"HTTP {response.status_code}  X-Trace-ID: {response.headers.get('X-Trace-ID', '-')}"
    )
    if "Retry-After" in response.headers:
        status_line += f"  Retry-After: {response.headers['Retry-After']}"
    print(status_line)
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return 0 if response.ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payctl", description="Merchant CLI (signed requests)")
    sub = parser.add_subparsers(dest="command", required=True)
    pay = sub.add_parser("pay", help="create a payment")
    pay.add_argument("--amount", type=int, required=True, help="minor units (1999 = $19.99)")
    pay.add_argument("--currency", default="USD")
    pay.add_argument("--payment-method", default="pm_card_visa")
    pay.add_argument("--order-no", default=None, help="merchant_order_no (default: random)")
    pay.add_argument("--customer-id", default=None)
    pay.add_argument("--country", default=None)
    pay.add_argument("--idempotency-key", default=None)
    get = sub.add_parser("get", help="look up a payment")
    get.add_argument("payment_no")
    order = sub.add_parser("order", help="look up an order")
    order.add_argument("order_no")
    refund = sub.add_parser("refund", help="refund a payment (full or partial)")
    refund.add_argument("payment_no")
    refund.add_argument("--amount", type=int, required=True)
    refund.add_argument("--reason", default=None)
    refund.add_argument("--idempotency-key", default=None)
    trace = sub.add_parser("trace", help="print the span tree of a trace")
    trace.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"payctl: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `payctl ... | head`: the reader has gone, no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush then succeeds
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "pay":
        customer = {k: v for k, v in {"id": args.customer_id, "country": args.country}.items() if v}
        body: dict[str, Any] = {
            "merchant_order_no": args.order_no or f"cli-{uuid.uuid4().hex[:12]}",
            "amount": args.amount,
            "currency": args.currency,
            "payment_method": args.payment_method,
        }
        if customer:
            body["customer"] = customer
        return _send("POST", "/api/v1/payments", body, args.idempotency_key)
    if args.command == "get":
        return _send("GET", f"/api/v1/payments/{args.payment_no}", None, None)
    if args.command == "order":
        return _send("GET", f"/api/v1/orders/{args.order_no}", None, None)
    if args.command == "refund":
        refund_body: dict[str, Any] = {"amount": args.amount}
        if args.reason:
            refund_body["reason"] = args.reason
        path = f"/api/v1/payments/{args.payment_no}/refunds"
        return _send("POST", path, refund_body, args.idempotency_key)
    from local.trace_view import main as trace_main

    return trace_main(list(args.rest))


if __name__ == "__main__":
    sys.exit(main())
