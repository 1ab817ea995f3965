"""A thread-safe circuit breaker guarding one payment provider, shared across environments.

closed --(N consecutive failures)--> open --(reset_seconds)--> half_open
half_open --(one trial succeeds)--> closed;  half_open --(trial fails)--> open.

Only *unavailability* is a failure (connection errors, timeouts, 5xx/429 after retries):
a decline or a 4xx proves the provider is up, so it counts as a success.

Each execution environment keeps its own counters, but an opening is published to a shared
store (DynamoDB, `store.breakers`) as "open until T" (wall-clock epoch seconds), and every
environment re-reads it at most every `sync_seconds`: one environment's trip is honoured by
the others within seconds instead of each paying N failures of its own. A store that cannot
be reached never blocks a call: the breaker then works locally.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Literal, Protocol

from payments.errors import ChannelUnavailable

State = Literal["closed", "open", "half_open"]

_log = logging.getLogger(__name__)


class SharedBreakerState(Protocol):
    def opened_until(self, name: str) -> float | None:
        """Epoch seconds until which the breaker is open, or None if it is not."""
        ...

    def open(self, name: str, until: float) -> None: ...

    def close(self, name: str, now: float) -> None:
        """Clear an opening that has expired (a fresh one from elsewhere survives)."""
        ...


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        shared: SharedBreakerState | None = None,
        sync_seconds: float = 2.0,
    ) -> None:
        if failure_threshold < 1 or reset_seconds <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_seconds > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._shared = shared
        self._sync_seconds = sync_seconds
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_until: float | None = None
        self._last_sync = -math.inf
        # True while the single half-open trial call is in flight.
        self._trial_in_flight = False

    @property
    def state(self) -> State:
        self._sync()
        with self._lock:
            return self._state(self._clock())

    def remaining_seconds(self) -> int:
        """Whole seconds until a call can be admitted again (0 when closed or half-open)."""
        self._sync()
        with self._lock:
            return self._remaining(self._clock())

    def _state(self, now: float) -> State:
        if self._opened_until is None:
            return "closed"
        return "open" if now < self._opened_until else "half_open"

    def _remaining(self, now: float) -> int:
        if self._opened_until is None or now >= self._opened_until:
            return 0
        return max(1, math.ceil(self._opened_until - now))

    def _sync(self) -> None:
        """Adopt an opening published by another environment (rate-limited read)."""
        if self._shared is None:
            return
        now = self._clock()
        with self._lock:
            if now - self._last_sync < self._sync_seconds:
                return
            self._last_sync = now
        try:
            until = self._shared.opened_until(self.name)
        except Exception:
            _log.warning("circuit breaker state unreadable; using local state", exc_info=True)
            return
        with self._lock:
            if until is not None and until > now and until > (self._opened_until or 0.0):
                self._opened_until = until

    def acquire(self) -> None:
        """Admit one call or raise ChannelUnavailable without touching the provider."""
        self._sync()
        with self._lock:
            now = self._clock()
            state = self._state(now)
            if state == "closed":
                return
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return
            # Open: come back when it half-opens. Half-open with a trial in flight: its
            # verdict is at most one call away.
            retry_after = self._remaining(now) if state == "open" else 1
        raise ChannelUnavailable(
            f"The {self.name} channel is unavailable (circuit open); retry later.",
            retry_after=retry_after,
        )

    def record_success(self) -> None:
        with self._lock:
            was_open = self._opened_until is not None
            self._failures = 0
            self._opened_until = None
            self._trial_in_flight = False
            now = self._clock()
        if was_open:
            self._publish(lambda shared: shared.close(self.name, now))

    def record_failure(self) -> None:
        with self._lock:
            now = self._clock()
            if self._trial_in_flight or self._opened_until is not None:
                # A failed trial (or a straggler that started before the trip) re-opens
                # the breaker and restarts the reset window.
                self._trial_in_flight = False
            else:
                self._failures += 1
                if self._failures < self.failure_threshold:
                    return
            until = self._opened_until = now + self.reset_seconds
        self._publish(lambda shared: shared.open(self.name, until))

    def release(self) -> None:
        """End a call that gave no verdict (an unexpected bug) without changing state."""
        with self._lock:
            self._trial_in_flight = False

    def _publish(self, write: Callable[[SharedBreakerState], None]) -> None:
        if self._shared is None:
            return
        try:
            write(self._shared)
        except Exception:
            _log.warning("circuit breaker state not published", exc_info=True)


def describe(until: float | None, now: float) -> dict[str, object]:
    """The shared state as /health reports it."""
    if until is None:
        return {"state": "closed"}
    if now < until:
        return {"state": "open", "retry_after": max(1, math.ceil(until - now))}
    return {"state": "half_open"}
