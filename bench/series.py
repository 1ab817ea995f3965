"""Prometheus series for a simulated day of Lambda environment churn: per-environment ids
(before) vs leased instance slots (after), with the real `series_pool` code.

Model, per function, minute by minute over 24 h: the number of live environments follows a
diurnal curve between `low` and `peak`; an environment lives 30-240 min (Lambda recycles
them) and surplus environments are reaped when traffic falls, so new ones keep starting all
day. Each live environment remote-writes every minute. Before: `instance` is a random id per
environment. After: `InstanceSlot` over `InMemorySlotLeases` (the DynamoDB contract) with the
production lease time. Series = distinct (function, instance) x series one environment writes
(measured from the real metrics registry after a payment on the in-memory fakes).
"""

from __future__ import annotations

import math
import random
import sys
from typing import Any

from bench.common import Json, child_main, create_payment_event

DAY_MIN = 24 * 60
PROFILE = {  # function: (low, peak) concurrent environments
    "create_payment": (2, 40),
    "refund": (1, 8),
    "risk_check": (2, 40),
    "order": (2, 40),
    "channel": (2, 40),
}
LEASE_S = 900.0


def simulate(seed: int = 7, slots: int = 64) -> Json:
    from payments.observability.series_pool import InMemorySlotLeases, InstanceSlot

    rng = random.Random(seed)
    leases = InMemorySlotLeases()
    now = [0.0]
    before: set[tuple[str, str]] = set()
    after: set[tuple[str, str]] = set()
    started = 0
    peak_live = 0
    for function, (low, peak) in PROFILE.items():
        live: list[dict[str, Any]] = []
        for minute in range(DAY_MIN):
            now[0] = minute * 60.0
            target = round(low + (peak - low) * math.sin(math.pi * minute / DAY_MIN) ** 2)
            live = [env for env in live if env["dies"] > minute]
            rng.shuffle(live)
            live = live[:target]  # surplus environments are reaped
            while len(live) < target:
                started += 1
                slot = InstanceSlot(leases, function, slots, LEASE_S, clock=lambda: now[0])
                live.append(
                    {"id": f"{started:08x}", "dies": minute + rng.randint(30, 240), "slot": slot}
                )
            peak_live = max(peak_live, len(live))
            for env in live:
                before.add((function, env["id"]))
                current = env["slot"].current()
                if current is not None:
                    after.add((function, current[0]))
    return {
        "environments_started": started,
        "peak_live_per_function": peak_live,
        "instances_before": len(before),
        "instances_after": len(after),
    }


def series_per_environment() -> int:
    """Series one create_payment environment writes after a payment (real registry)."""
    import json

    from bench import fakes
    from payments.observability import metrics

    fakes.install(workflow="inline")
    handler = fakes.load_handler("create_payment")
    handler(json.loads(json.dumps(create_payment_event())), fakes.Context("CreatePaymentFunction"))
    with metrics._LOCK:
        raw, _ = metrics._raw_series()
    return len(raw)


def _child(spec: Json) -> Json:
    result = simulate()
    per_env = series_per_environment()
    result["series_per_environment"] = per_env
    result["series_before"] = result["instances_before"] * per_env
    result["series_after"] = result["instances_after"] * per_env
    result["ratio"] = result["series_after"] / result["series_before"]
    return result


if __name__ == "__main__":
    if not child_main(sys.argv[1:], _child):
        sys.exit("usage: python -m bench (this module runs as a child)")
