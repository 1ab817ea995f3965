"""The local twin of EventBridge Scheduler: invokes the template's scheduled functions.

Every `Schedule`/`ScheduleV2` event of a function in template.yaml becomes a timer thread
that invokes the function through the local Lambda runtime. The period is the template's
own `rate(...)` unless the environment shortens it: `RECONCILE_INTERVAL_SECONDS` for the
reconciler (local default 5 s, so `make run` settles unknown outcomes within seconds), and
`LOCAL_SCHEDULE_INTERVAL_SECONDS` for any other schedule.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from local.template import read_yaml

RECONCILER = "ReconcilerFunction"
DEFAULT_RECONCILE_INTERVAL_S = 5.0
_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days|second|seconds)\)$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class Invoker(Protocol):
    def invoke(self, name_or_arn: str, payload: Any) -> tuple[Any, dict[str, Any] | None]: ...


@dataclass(frozen=True)
class Schedule:
    function: str
    name: str
    expression: str
    seconds: float


def rate_seconds(expression: str) -> float | None:
    """Seconds of a `rate(...)` expression; None for cron/at (not emulated)."""
    match = _RATE.match(expression.strip())
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]


def _parameter_default(template: Mapping[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "Ref" in value:
        param = (template.get("Parameters") or {}).get(value["Ref"]) or {}
        return param.get("Default")
    return value


def schedules(template_path: Path, environ: Mapping[str, str]) -> list[Schedule]:
    """The template's schedules, with their local periods."""
    template = read_yaml(template_path)
    found = []
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        events = (resource.get("Properties") or {}).get("Events") or {}
        for name, event in events.items():
            if event.get("Type") not in ("Schedule", "ScheduleV2"):
                continue
            props = event.get("Properties") or {}
            expression = str(_parameter_default(template, props.get("ScheduleExpression")) or "")
            seconds = _local_period(logical_id, expression, environ)
            if seconds is not None:
                found.append(Schedule(logical_id, name, expression, seconds))
    return found


def _local_period(function: str, expression: str, environ: Mapping[str, str]) -> float | None:
    variable = (
        "RECONCILE_INTERVAL_SECONDS"
        if function == RECONCILER
        else ("LOCAL_SCHEDULE_INTERVAL_SECONDS")
    )
    raw = environ.get(variable, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{variable} must be a number of seconds, got {raw!r}") from None
        if value <= 0:
            raise ValueError(f"{variable} must be > 0, got {raw!r}")
        return value
    if function == RECONCILER:
        return DEFAULT_RECONCILE_INTERVAL_S
    return rate_seconds(expression)


class Scheduler:
    """One daemon thread per schedule; `stop()` ends them all."""

    def __init__(self, runtime: Invoker, entries: list[Schedule]) -> None:
        self.runtime = runtime
        self.entries = entries
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.runs: dict[str, int] = {}

    def start(self) -> Scheduler:
        for entry in self.entries:
            thread = threading.Thread(
                target=self._loop, args=(entry,), name=f"schedule-{entry.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def _loop(self, entry: Schedule) -> None:
        while not self._stopping.wait(entry.seconds):
            self.fire(entry)

    def fire(self, entry: Schedule) -> None:
        """One scheduled invocation, as EventBridge Scheduler's Lambda target sends it."""
        event = {
            "source": "aws.scheduler",
            "detail-type": "Scheduled Event",
            "schedule": entry.name,
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        with contextlib.suppress(Exception):  # a failed run is the next run's to retry
            _, error = self.runtime.invoke(entry.function, event)
            self.runs[entry.function] = self.runs.get(entry.function, 0) + 1
            if error is not None:
                print(
                    f"scheduled {entry.function} failed: {error.get('errorType')}", file=sys.stderr
                )

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
