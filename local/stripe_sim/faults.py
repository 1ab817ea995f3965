"""Fault rules: which /v1 requests misbehave, how, and how many more times."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from local.stripe_sim.errors import Json, StripeError

DEFAULT_HANG_SECONDS = 30.0
FAULT_MODES = (
    "none",  # a matching "none" rule lets the request through (an exception to later rules)
    "error",  # 500 once execution began, before any side effect; saved under the key
    "error_after",  # the operation runs (charge, refund, events), then a saved 500
    "hang",  # in-progress object visible, key in flight, sleep, then complete normally
    "conflict",  # 409 idempotency_key_in_use, as if another request held the key
    "rate_limit",  # 429, nothing runs
    "drop",  # the operation runs, then the connection closes without a response
    "unavailable",  # 503 in front of the API: nothing runs, nothing saved
)


@dataclass
class Fault:
    mode: str = "none"
    count: int | None = None  # requests still to affect; None = until removed
    hang_seconds: float = DEFAULT_HANG_SECONDS
    path: str | None = None  # path prefix, e.g. /v1/refunds
    match: str | None = None  # substring of one of the request's values
    method: str | None = None  # GET or POST; None = both
    id: str | None = None

    def as_json(self) -> Json:
        return {
            "id": self.id,
            "mode": self.mode,
            "count": self.count,
            "hang_seconds": self.hang_seconds,
            "path": self.path,
            "match": self.match,
            "method": self.method,
        }


@dataclass(frozen=True)
class FaultTarget:
    """What a rule can be matched against, and which modes can apply to this request."""

    method: str
    path: str
    values: tuple[str, ...]
    modes: frozenset[str]


class FaultRules:
    """An ordered rule list; the first rule matching a request wins and spends one count."""

    def __init__(self, initial: Fault | None = None) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._rules: list[Fault] = []
        if initial is not None and initial.mode != "none":
            self.add(initial)

    def replace_all(self, fault: Fault) -> Fault:
        """POST /_sim/fault: one rule instead of all (mode none clears)."""
        with self._lock:
            self._rules.clear()
        return self.add(fault) if fault.mode != "none" else fault

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            rule = replace(fault, id=f"fault_{next(self._ids)}")
            self._rules.append(rule)
            return replace(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[Fault]:
        with self._lock:
            return [replace(r) for r in self._rules]

    def first(self) -> Fault:
        with self._lock:
            return replace(self._rules[0]) if self._rules else Fault()

    def take(self, target: FaultTarget) -> Fault | None:
        """The fault to apply to this request (None: behave), spending one of its count."""
        with self._lock:
            for rule in self._rules:
                if not _matches(rule, target):
                    continue
                taken = replace(rule)
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
                return None if taken.mode == "none" else taken
            return None


def _matches(rule: Fault, target: FaultTarget) -> bool:
    if rule.mode != "none" and rule.mode not in target.modes:
        return False
    if rule.method is not None and rule.method != target.method:
        return False
    if rule.path is not None and not target.path.startswith(rule.path):
        return False
    return rule.match is None or any(rule.match in v for v in target.values)


def parse_fault(data: Any) -> Fault:
    if not isinstance(data, dict) or data.get("mode") not in FAULT_MODES:
        raise _bad(f"mode must be one of {', '.join(FAULT_MODES)}.")
    unknown = set(data) - {"mode", "count", "hang_seconds", "path", "match", "method"}
    if unknown:
        raise _bad(f"unknown fault fields: {', '.join(sorted(unknown))}.")
    count, hang = data.get("count"), data.get("hang_seconds")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise _bad("count must be a positive integer.")
    hang = DEFAULT_HANG_SECONDS if hang is None else hang
    if not isinstance(hang, int | float) or isinstance(hang, bool) or hang < 0:
        raise _bad("hang_seconds must be >= 0.")
    path, match = data.get("path"), data.get("match")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise _bad("path must be a path prefix such as /v1/refunds.")
    if match is not None and (not isinstance(match, str) or not match):
        raise _bad("match must be a non-empty string.")
    method = data.get("method")
    if method is not None and method not in ("GET", "POST"):
        raise _bad("method must be GET or POST.")
    return Fault(
        mode=str(data["mode"]),
        count=count,
        hang_seconds=float(hang),
        path=path,
        match=match,
        method=method,
    )


def fault_from_env(environ: Mapping[str, str] | None = None) -> Fault:
    """STRIPE_SIM_FAULT=<mode>[:count] (e.g. error:3), STRIPE_SIM_HANG_SECONDS=<seconds>."""
    env = os.environ if environ is None else environ
    raw = env.get("STRIPE_SIM_FAULT", "none").strip() or "none"
    mode, _, count = raw.partition(":")
    try:
        parsed_count = int(count) if count.strip() else None
        hang = float(env.get("STRIPE_SIM_HANG_SECONDS", str(DEFAULT_HANG_SECONDS)))
    except ValueError as exc:
        raise _bad("STRIPE_SIM_FAULT count and STRIPE_SIM_HANG_SECONDS must be numbers.") from exc
    fault = parse_fault({"mode": mode.strip().lower(), "count": parsed_count, "hang_seconds": hang})
    return fault if fault.mode != "none" else Fault(hang_seconds=fault.hang_seconds)


def modes_for(method: str, keyed: bool, executes: bool) -> Collection[str]:
    """The modes that make sense for a request.

    A replayed or conflicting keyed request runs nothing, so only the transport-level faults
    apply to it; `conflict` needs a key to conflict on.
    """
    if not executes:
        return frozenset({"rate_limit", "drop", "unavailable"})
    if method == "POST" and keyed:
        return frozenset(FAULT_MODES)
    return frozenset(FAULT_MODES) - {"conflict"}


def _bad(message: str) -> StripeError:
    return StripeError(400, "invalid_request_error", message)
