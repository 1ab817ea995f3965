"""The export pipeline: spans and metrics leave through two lanes, each one worker thread.

`flush(budget)` asks both lanes for a run and waits for them at most `budget` seconds. The
caller is the in-process Lambda extension after the runtime has posted the response (the
post-runtime phase), or, outside Lambda, the handler wrapper itself (inline). A lane whose
previous run is still stuck on a slow backend is not waited for again: it runs once more as
soon as it is free, and what it has not sent yet stays queued (bounded). So a backend that
is slow or down costs at most `budget` per flush and never a lost span below the bounds.

Two lanes, because the backends are independent: a hung OTLP collector must not hold the
Prometheus remote write back, nor the other way round. The threads start on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_log = logging.getLogger(__name__)


class Lane:
    """One worker thread running `work(deadline)` whenever asked; requests coalesce."""

    def __init__(self, name: str, work: Callable[[float], None], timeout_s: float) -> None:
        self.name = name
        self._work = work
        self._timeout_s = timeout_s
        self._cond = threading.Condition()
        self._requested = 0  # runs asked for
        self._completed = 0  # runs finished
        self._running = False
        self._again = False  # asked while running: run once more afterwards
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._running

    def request(self, *, behind_in_flight: bool = False) -> int | None:
        """Ask for a run: a ticket to wait for. While an earlier run is in flight the new one
        follows it, and the ticket is None unless `behind_in_flight` (the shutdown flush waits
        for both; the per-invocation flush never waits on a backend that is already stuck)."""
        with self._cond:
            if self._stopped:
                return None
            if self._running:
                self._again = True
                return self._requested + 1 if behind_in_flight else None
            self._requested += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self._requested

    def wait(self, ticket: int | None, deadline: float) -> bool:
        """True once run `ticket` finished; False at `deadline` (time.monotonic())."""
        if ticket is None:
            return False
        with self._cond:
            while self._completed < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self, wait_s: float = 1.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._completed >= self._requested and not self._stopped:
                    self._cond.wait()
                if self._stopped and self._completed >= self._requested:
                    return
                target = self._requested
                self._running = True
            try:
                self._work(time.monotonic() + self._timeout_s)
            except Exception:  # a broken exporter must not end the lane
                _log.warning("%s export failed", self.name, exc_info=True)
            with self._cond:
                self._running = False
                self._completed = target
                if self._again:
                    self._again = False
                    self._requested += 1
                self._cond.notify_all()


@dataclass(frozen=True)
class FlushOutcome:
    seconds: float  # how long the caller waited
    complete: bool  # every lane finished within the budget


class ExportPipeline:
    """Both lanes; `flush` is what the extension and the inline path call."""

    def __init__(
        self,
        export_spans: Callable[[float], None],
        export_metrics: Callable[[float], None],
        timeout_s: float,
    ) -> None:
        self.lanes = (
            Lane("otel-span-export", export_spans, timeout_s),
            Lane("metrics-export", export_metrics, timeout_s),
        )

    def flush(self, budget_s: float, *, behind_in_flight: bool = False) -> FlushOutcome:
        started = time.monotonic()
        deadline = started + max(0.0, budget_s)
        tickets = [lane.request(behind_in_flight=behind_in_flight) for lane in self.lanes]
        complete = all(
            [lane.wait(t, deadline) for lane, t in zip(self.lanes, tickets, strict=True)]
        )
        return FlushOutcome(time.monotonic() - started, complete)

    def stop(self) -> None:
        for lane in self.lanes:
            lane.stop()
