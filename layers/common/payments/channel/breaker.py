"""A thread-safe circuit breaker guarding one payment provider.

closed --(N consecutive failures)--> open --(reset_seconds)--> half_open
half_open --(one trial succeeds)--> closed;  half_open --(trial fails)--> open.

Only *unavailability* is a failure (connection errors, timeouts, 5xx/429 after retries):
a decline or a 4xx proves the provider is up, so it counts as a success.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Literal

from payments.errors import ChannelUnavailable

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_seconds <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_seconds > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        # True while the single half-open trial call is in flight.
        self._trial_in_flight = False

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_seconds:
            return "half_open"
        return "open"

    def acquire(self) -> None:
        """Admit one call or raise ChannelUnavailable without touching the provider."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return
            if state == "open":
                assert self._opened_at is not None
                remaining = self.reset_seconds - (self._clock() - self._opened_at)
                retry_after = max(1, math.ceil(remaining))
            else:
                # Another caller holds the trial; its verdict is at most one call away.
                retry_after = 1
        raise ChannelUnavailable(
            f"The {self.name} channel is unavailable (circuit open); retry later.",
            retry_after=retry_after,
        )

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            if self._trial_in_flight or self._opened_at is not None:
                # A failed trial (or a straggler that started before the trip) re-opens
                # the breaker and restarts the reset window.
                self._opened_at = self._clock()
                self._trial_in_flight = False
                return
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._opened_at = self._clock()

    def release(self) -> None:
        """End a call that gave no verdict (an unexpected bug) without changing state."""
        with self._lock:
            self._trial_in_flight = False
