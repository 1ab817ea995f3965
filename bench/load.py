"""`make load`: bounded load against the local stack over HTTP, then invariants.

N merchants (each its own API key, provisioned in the emulator) run concurrently for T
seconds, each repeating: create a payment (Idempotency-Key; about 10% declined cards, 5%
replayed with the same key and body), read it, read its order, and refund it in one to
three parts, some of which overshoot the refundable amount (422 expected). Stops by itself:
at the deadline or after LOAD_MAX_REQUESTS requests, whichever comes first. Loopback only.

Afterwards every payment created is read back and checked:
  * payment status consistent with its order (succeeded/partially_refunded -> paid,
    refunded -> refunded, failed -> cancelled);
  * sum of refunds == refunded_amount <= amount, and the Stripe simulator agrees;
  * no charge made twice: at most one payment intent per payment_no in the simulator;
  * an idempotent replay returned the same payment.

Environment: LOAD_MERCHANTS (4), LOAD_SECONDS (40), LOAD_MAX_REQUESTS (20000).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from bench.common import Json, fmt, machine, median, percentile, quiet_logs, table, write_results

DECLINE_SHARE, REPLAY_SHARE = 0.10, 0.05


@dataclass
class Merchant:
    key: str
    secret: str
    merchant_id: str


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    payments: dict[str, Merchant] = field(default_factory=dict)
    replay_mismatches: list[str] = field(default_factory=list)

    def record(self, op: str, status: int, code: str, ms: float) -> None:
        with self.lock:
            self.latencies.setdefault(op, []).append(ms)
            self.codes[f"{op} {status}{' ' + code if code else ''}"] += 1


class Client:
    """A merchant's HTTP client: every request signed, latency and status recorded."""

    timeout = 30.0  # seconds per request

    def __init__(
        self, base: str, merchant: Merchant, stats: Stats, budget: Callable[[], bool]
    ) -> None:
        self.base, self.merchant, self.stats, self.budget = base, merchant, stats, budget
        self.session = requests.Session()

    def call(
        self,
        op: str,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Json]:
        from payments.auth import signed_headers

        raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        all_headers = {
            "Content-Type": "application/json",
            **signed_headers(self.merchant.key, self.merchant.secret, method, path, raw),
            **(headers or {}),
        }
        started = time.perf_counter()
        try:
            response = self.session.request(
                method,
                self.base + path,
                data=raw or None,
                headers=all_headers,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            with self.stats.lock:
                self.stats.transport_errors[type(exc).__name__] += 1
            return 0, {}
        ms = (time.perf_counter() - started) * 1000
        try:
            data: Json = response.json()
        except ValueError:
            data = {}
        error = data.get("error") if isinstance(data, dict) else None
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
        self.stats.record(op, response.status_code, code, ms)
        return response.status_code, data

    def one_round(self, rng: random.Random) -> None:
        declined = rng.random() < DECLINE_SHARE
        amount = rng.randint(100, 50_000)
        body = {
            "merchant_order_no": f"load-{uuid.uuid4().hex[:20]}",
            "amount": amount,
            "currency": rng.choice(["USD", "EUR", "GBP"]),
            "payment_method": "pm_card_chargeDeclined" if declined else "pm_card_visa",
            "customer": {"id": f"cus_{rng.randint(1, 10_000)}", "country": "US"},
        }
        key = {"Idempotency-Key": uuid.uuid4().hex}
        status, payment = self.call("create", "POST", "/api/v1/payments", body, key)
        payment_no = payment.get("payment_no") if isinstance(payment, dict) else None
        if not payment_no:
            return
        with self.stats.lock:
            self.stats.payments[str(payment_no)] = self.merchant
        if self.budget() and rng.random() < REPLAY_SHARE:
            again_status, again = self.call("replay", "POST", "/api/v1/payments", body, key)
            if again_status != status or again.get("payment_no") != payment_no:
                with self.stats.lock:
                    self.stats.replay_mismatches.append(str(payment_no))
        if not self.budget():
            return
        self.call("get_payment", "GET", f"/api/v1/payments/{payment_no}")
        order_no = payment.get("order_no")
        if order_no and self.budget():
            self.call("get_order", "GET", f"/api/v1/orders/{order_no}")
        if status != 201:
            return
        remaining = amount
        for _ in range(rng.randint(1, 3)):
            if not self.budget():
                return
            part = (
                rng.randint(1, max(1, amount // 2))
                if rng.random() < 0.8
                else remaining + rng.randint(1, 100)
            )
            refund_key = {"Idempotency-Key": uuid.uuid4().hex}
            path = f"/api/v1/payments/{payment_no}/refunds"
            got, _ = self.call(
                "refund",
                "POST",
                path,
                {"amount": part, "reason": "requested_by_customer"},
                refund_key,
            )
            if got == 201:
                remaining -= part


def _provision(stack: Any, count: int) -> list[Merchant]:
    emulator = stack.emulator
    table_name = next(name for name in emulator.tables.values() if "payment" in name.lower())
    ddb = emulator.client("dynamodb")
    merchants = [Merchant(emulator.merchant_key, emulator.merchant_secret, emulator.merchant_id)]
    for i in range(1, count):
        m = Merchant(f"mk_load_{i}", f"sk_load_secret_{i}", f"merch_load_{i}")
        item = {
            "pk": f"APIKEY#{m.key}",
            "sk": "APIKEY",
            "merchant_id": m.merchant_id,
            "secret": m.secret,
        }
        item.update({"key_id": m.key, "status": "active"})
        ddb.put_item(TableName=table_name, Item={k: {"S": v} for k, v in item.items()})
        merchants.append(m)
    return merchants[:count]


def _verify(base: str, sim_url: str, stats: Stats) -> Json:
    """Every invariant over every payment created; returns violations by kind."""
    intents = requests.get(f"{sim_url}/_sim/payment_intents", timeout=30).json()["data"]
    by_payment: dict[str, list[Json]] = {}
    for intent in intents:
        payment_no = (intent.get("metadata") or {}).get("payment_no")
        if payment_no:
            by_payment.setdefault(str(payment_no), []).append(intent)
    violations: Counter[str] = Counter()
    examples: dict[str, str] = {}
    lock = threading.Lock()
    expected_order = {
        "succeeded": "paid",
        "partially_refunded": "paid",
        "refunded": "refunded",
        "failed": "cancelled",
    }

    def violate(kind: str, payment_no: str) -> None:
        with lock:
            violations[kind] += 1
            examples.setdefault(kind, payment_no)

    def check(item: tuple[str, Merchant]) -> None:
        payment_no, merchant = item
        stat = Stats()
        client = Client(base, merchant, stat, lambda: True)
        status, payment = client.call("verify", "GET", f"/api/v1/payments/{payment_no}")
        if status != 200:
            violate(f"payment unreadable ({status})", payment_no)
            return
        state = payment["status"]
        refunds = payment.get("refunds") or []
        refunded = sum(int(r["amount"]) for r in refunds if r.get("status") == "succeeded")
        if refunded != payment["refunded_amount"]:
            violate("refunds != refunded_amount", payment_no)
        if refunded > payment["amount"]:
            violate("refunds > amount", payment_no)
        charges = by_payment.get(payment_no, [])
        succeeded = [i for i in charges if i.get("status") == "succeeded"]
        if len(charges) > 1:
            violate("charged more than once", payment_no)
        sim_refunded = sum(
            int(r["amount"])
            for i in succeeded
            for r in i.get("refunds", [])
            if r.get("status") == "succeeded"
        )
        if sim_refunded != refunded:
            violate("simulator refunds != payment refunds", payment_no)
        if state in ("succeeded", "partially_refunded", "refunded") and len(succeeded) != 1:
            violate("paid without exactly one successful charge", payment_no)
        if state not in ("succeeded", "partially_refunded", "refunded") and succeeded:
            violate("charged but not paid", payment_no)
        if state in expected_order:
            order_no = payment.get("order_no")
            if not order_no:
                violate("no order", payment_no)
                return
            got, order = client.call("verify", "GET", f"/api/v1/orders/{order_no}")
            if got != 200 or order.get("status") != expected_order[state]:
                violate(f"order {order.get('status')} for payment {state}", payment_no)
        elif state not in ("pending_review", "risk_rejected"):
            violate(f"unexpected payment status {state}", payment_no)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(check, list(stats.payments.items())))
    for payment_no in stats.replay_mismatches:
        violate("idempotent replay differed", payment_no)
    return {
        "payments_checked": len(stats.payments),
        "intents_in_simulator": len(intents),
        "violations": dict(violations),
        "examples": examples,
    }


def run(merchants: int = 4, seconds: float = 40.0, max_requests: int = 20_000) -> Json:
    from local.stack import start_stack

    quiet_logs()
    # Isolated, as `make run`: every execution environment is its own process.
    stack = start_stack(
        port=0,
        env_overrides={"TRACES_EXPORTER_FILE": "", "PROMETHEUS_REMOTE_WRITE_URL": ""},
        isolated=True,
    )
    try:
        accounts = _provision(stack, merchants)
        stats = Stats()
        deadline = time.monotonic() + seconds

        def budget() -> bool:
            with stats.lock:
                if stats.requests >= max_requests:
                    return False
                stats.requests += 1
            return time.monotonic() < deadline

        def worker(index: int) -> None:
            rng = random.Random(index)
            client = Client(stack.api_url, accounts[index], stats, budget)
            while budget():
                client.one_round(rng)

        began = time.monotonic()
        threads = [
            threading.Thread(target=worker, args=(i,), daemon=True) for i in range(merchants)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 60)
        elapsed = time.monotonic() - began
        verification = _verify(stack.api_url, str(stack.sim_url), stats)
    finally:
        stack.stop()
    every = [ms for values in stats.latencies.values() for ms in values]
    server_errors = sum(n for key, n in stats.codes.items() if key.split()[1].startswith("5"))
    return {
        "machine": machine(),
        "merchants": merchants,
        "seconds": seconds,
        "elapsed_s": elapsed,
        "requests": len(every),
        "req_per_s": len(every) / elapsed if elapsed else 0.0,
        "latency_ms": {
            op: {"n": len(v), "p50": median(v), "p95": percentile(v, 95), "p99": percentile(v, 99)}
            for op, v in {"all": every, **stats.latencies}.items()
        },
        "codes": dict(sorted(stats.codes.items())),
        "transport_errors": dict(stats.transport_errors),
        "server_errors": server_errors,
        "verification": verification,
        "passed": server_errors == 0
        and not stats.transport_errors
        and not verification["violations"],
    }


def report(result: Json) -> str:
    lat = result["latency_ms"]
    ver = result["verification"]
    lines = [
        f"# Load — {result['machine']['date']}: {result['merchants']} merchants for "
        f"{result['seconds']:.0f} s (ran {result['elapsed_s']:.1f} s)",
        f"{result['requests']} requests, {result['req_per_s']:.1f} req/s; "
        f"5xx: {result['server_errors']}; transport errors: {result['transport_errors'] or 0}",
        table(
            ["operation", "n", "p50 ms", "p95 ms", "p99 ms"],
            [[op, e["n"], fmt(e["p50"]), fmt(e["p95"]), fmt(e["p99"])] for op, e in lat.items()],
        ),
        table(["response", "count"], list(result["codes"].items())),
        f"Invariants over {ver['payments_checked']} payments "
        f"({ver['intents_in_simulator']} intents in the simulator): "
        f"{ver['violations'] or 'no violations'}",
        "PASS" if result["passed"] else "FAIL",
    ]
    return "\n".join(lines)


def main() -> int:
    # The in-process functions write EMF and logs to stdout (CloudWatch on Lambda): not here.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        result = run(
            merchants=int(os.environ.get("LOAD_MERCHANTS", "4")),
            seconds=float(os.environ.get("LOAD_SECONDS", "40")),
            max_requests=int(os.environ.get("LOAD_MAX_REQUESTS", "20000")),
        )
    write_results("load", result)
    print(report(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
