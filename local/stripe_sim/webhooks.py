"""Signed webhook delivery: a background worker, retries with backoff, a delivery log.

Signing is Stripe's scheme: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret,
"{t}.{body}")>`, one v1 entry per active secret (as during a secret roll). Each attempt is
signed afresh with the time it is sent. Secrets never appear in logs or in the admin API.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from local.stripe_sim.errors import Json

DEFAULT_SECRET = "whsec_local_secret"  # noqa: S105 - the local stack's published test secret
MAX_LOG = 2000
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


@dataclass(frozen=True)
class WebhookEndpoint:
    url: str
    secrets: tuple[str, ...] = (DEFAULT_SECRET,)
    delay_seconds: float = 0.0  # before the first attempt of each event
    max_attempts: int = 5
    retry_seconds: float = 1.0  # backoff before the 2nd attempt; doubles each time
    timeout_seconds: float = 5.0

    def as_json(self) -> Json:
        return {
            "url": self.url,
            # A hint only, like Stripe's dashboard: enough to tell secrets apart.
            "secrets": [f"{s[:8]}…" for s in self.secrets],
            "delay_seconds": self.delay_seconds,
            "max_attempts": self.max_attempts,
            "retry_seconds": self.retry_seconds,
            "timeout_seconds": self.timeout_seconds,
        }


def sign(body: bytes, secrets: tuple[str, ...], timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"]
    parts += ["v1=" + hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join(parts)


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    event: Json = field(compare=False)
    endpoint: WebhookEndpoint = field(compare=False)
    attempt: int = field(default=1, compare=False)


Settled = Callable[[str], None]


class WebhookDispatcher:
    """Delivers events to one endpoint from a single daemon thread (started on first use)."""

    def __init__(self, endpoint: WebhookEndpoint | None = None) -> None:
        self._cond = threading.Condition()
        self._endpoint = endpoint
        self._queue: list[_Delivery] = []
        self._seq = itertools.count()
        self._log: deque[Json] = deque(maxlen=MAX_LOG)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._on_settled: Settled = lambda _event_id: None

    def on_settled(self, callback: Settled) -> None:
        """Called with the event id once its delivery succeeded or was given up."""
        self._on_settled = callback

    @property
    def endpoint(self) -> WebhookEndpoint | None:
        with self._cond:
            return self._endpoint

    def configure(self, endpoint: WebhookEndpoint | None) -> None:
        with self._cond:
            self._endpoint = endpoint

    def enqueue(self, event: Json) -> bool:
        """Queue an event for the endpoint (False when there is none)."""
        with self._cond:
            endpoint = self._endpoint
            if endpoint is None or self._stopped:
                return False
            due = time.monotonic() + endpoint.delay_seconds
            heapq.heappush(self._queue, _Delivery(due, next(self._seq), event, endpoint))
            self._ensure_worker()
            self._cond.notify()
            return True

    @property
    def running(self) -> bool:
        with self._cond:
            return self._thread is not None and self._thread.is_alive()

    def deliveries(self) -> list[Json]:
        with self._cond:
            return list(self._log)

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def clear(self) -> None:
        with self._cond:
            self._queue.clear()
            self._log.clear()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _ensure_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="stripe-sim-webhooks", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                delivery = self._next_due()
                if delivery is None:
                    return
            self._attempt(delivery)

    def _next_due(self) -> _Delivery | None:
        """Wait (holding the condition) for the next due delivery; None once stopped."""
        while not self._stopped:
            if not self._queue:
                self._cond.wait()
                continue
            wait = self._queue[0].due - time.monotonic()
            if wait <= 0:
                return heapq.heappop(self._queue)
            self._cond.wait(wait)
        return None

    def _attempt(self, delivery: _Delivery) -> None:
        status, error = _post(delivery.event, delivery.endpoint)
        ok = status is not None and 200 <= status < 300
        record: Json = {
            "event_id": delivery.event["id"],
            "type": delivery.event["type"],
            "url": delivery.endpoint.url,
            "attempt": delivery.attempt,
            "status": status,
            "error": error,
            "delivered": ok,
            "at": time.time(),
        }
        retry = not ok and delivery.attempt < delivery.endpoint.max_attempts
        with self._cond:
            self._log.append(record)
            if retry and not self._stopped:
                delivery.attempt += 1
                delivery.due = time.monotonic() + _backoff(delivery)
                delivery.seq = next(self._seq)
                heapq.heappush(self._queue, delivery)
                return
        self._on_settled(delivery.event["id"])


def _backoff(delivery: _Delivery) -> float:
    return float(delivery.endpoint.retry_seconds * 2 ** (delivery.attempt - 2))


def _post(event: Json, endpoint: WebhookEndpoint) -> tuple[int | None, str | None]:
    """One attempt: (status, None) if the receiver answered, else (None, what went wrong)."""
    # Stripe sends pretty-printed JSON; the signature covers these exact bytes.
    body = json.dumps(event, indent=2).encode()
    url = urllib.parse.urlsplit(endpoint.url)
    connection_type = (
        http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    )
    conn = connection_type(url.netloc, timeout=endpoint.timeout_seconds)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        "Stripe-Signature": sign(body, endpoint.secrets, int(time.time())),
    }
    try:
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        conn.request("POST", target, body, headers)
        response = conn.getresponse()
        response.read()
        return response.status, None
    except (OSError, http.client.HTTPException) as exc:
        return None, type(exc).__name__
    finally:
        conn.close()
