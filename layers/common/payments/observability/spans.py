"""Finished spans wait in bounded queues, one per exporter, until the export pipeline runs.

The SDK's BatchSpanProcessor exports from its own timer thread whenever it likes, which on
Lambda means during an invocation or across a freeze. Here ending a span only appends it to
a deque (the response path pays an append); the export pipeline (`pipeline.py`) drains the
queues when the extension or the inline flush says so. A full queue drops the new span and
counts it instead of blocking or growing; a failed export puts its batch back (bounded too),
so a slow or dead backend loses nothing until the bound is reached, and then says how much.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

_log = logging.getLogger(__name__)
MAX_BATCH = 512


class SpanQueue:
    """A bounded FIFO of finished spans in front of one exporter."""

    def __init__(self, exporter: SpanExporter, capacity: int) -> None:
        self.exporter = exporter
        self.capacity = capacity
        self.dropped = 0  # spans lost to a full queue since the environment started
        self.exported = 0
        self.failures = 0
        self._spans: deque[ReadableSpan] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._spans)

    def offer(self, span: ReadableSpan) -> None:
        with self._lock:
            if len(self._spans) >= self.capacity:
                self.dropped += 1
                return
            self._spans.append(span)

    def _take(self) -> list[ReadableSpan]:
        with self._lock:
            n = min(MAX_BATCH, len(self._spans))
            return [self._spans.popleft() for _ in range(n)]

    def _give_back(self, batch: Sequence[ReadableSpan]) -> None:
        """Put a failed batch back at the front; whatever no longer fits is dropped."""
        with self._lock:
            room = max(0, self.capacity - len(self._spans))
            keep = list(batch[:room])
            self.dropped += len(batch) - len(keep)
            self._spans.extendleft(reversed(keep))

    def export_pending(self, deadline: float) -> bool:
        """Export batch after batch until empty (True) or a failure / the deadline (False)."""
        while time.monotonic() < deadline:
            batch = self._take()
            if not batch:
                return True
            try:
                ok = self.exporter.export(batch) is SpanExportResult.SUCCESS
            except Exception:  # an exporter bug must not kill the pipeline
                _log.warning("span export raised", exc_info=True)
                ok = False
            if not ok:
                self.failures += 1
                self._give_back(batch)
                return False
            self.exported += len(batch)
        return not self._spans


class QueueingSpanProcessor(SpanProcessor):
    """The provider's one processor: sampled spans go to every exporter's queue."""

    def __init__(self) -> None:
        self.queues: tuple[SpanQueue, ...] = ()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        for queue in self.queues:
            queue.offer(span)

    def pending(self) -> int:
        return sum(len(queue) for queue in self.queues)

    def dropped(self) -> int:
        return sum(queue.dropped for queue in self.queues)

    def shutdown(self) -> None:
        queues, self.queues = self.queues, ()
        for queue in queues:
            try:
                queue.exporter.shutdown()
            except Exception:  # noqa: S112 - shutting down is best effort
                continue

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        return all(queue.export_pending(deadline) for queue in self.queues)
