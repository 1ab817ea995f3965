"""CircuitBreaker state machine, with a fake clock."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments.channel.breaker import CircuitBreaker
from payments.errors import ChannelUnavailable


def state(breaker: CircuitBreaker) -> str:
    # A function call, so mypy does not narrow the Literal across state changes.
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("stripe", failure_threshold=3, reset_seconds=10, clock=clock)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.acquire()
        breaker.record_failure()


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert state(breaker) == "closed"
    fail(breaker)
    assert state(breaker) == "open"
    with pytest.raises(ChannelUnavailable):
        breaker.acquire()


def test_success_resets_the_consecutive_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    breaker.acquire()
    breaker.record_success()  # e.g. a decline: the provider answered
    fail(breaker, 2)
    assert state(breaker) == "closed"


def test_open_rejects_with_remaining_seconds(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now += 2.5
    with pytest.raises(ChannelUnavailable) as info:
        breaker.acquire()
    assert info.value.retry_after == 8  # ceil(7.5)
    assert info.value.headers == {"Retry-After": "8"}
    clock.now += 7.4
    with pytest.raises(ChannelUnavailable) as info:
        breaker.acquire()
    assert info.value.retry_after == 1  # never 0


def test_half_open_admits_exactly_one_trial(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now += 10
    assert state(breaker) == "half_open"
    breaker.acquire()  # the trial
    with pytest.raises(ChannelUnavailable) as info:
        breaker.acquire()
    assert info.value.retry_after == 1
    breaker.record_success()
    assert state(breaker) == "closed"
    breaker.acquire()
    breaker.acquire()


def test_failed_trial_reopens_for_a_full_window(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now += 10
    fail(breaker)  # one failure is enough in half-open
    assert state(breaker) == "open"
    clock.now += 9.9
    assert state(breaker) == "open"
    clock.now += 0.1
    assert state(breaker) == "half_open"


def test_release_frees_the_trial_without_a_verdict(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now += 10
    breaker.acquire()
    breaker.release()
    assert state(breaker) == "half_open"
    breaker.acquire()  # a new trial is allowed


def test_only_one_thread_wins_the_trial(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now += 10
    admitted: list[int] = []
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            breaker.acquire()
            admitted.append(i)
        except ChannelUnavailable:
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 1


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker("x", reset_seconds=0)


@given(st.lists(st.booleans(), max_size=60), st.integers(min_value=1, max_value=5))
def test_opens_iff_threshold_consecutive_failures(outcomes: list[bool], threshold: int) -> None:
    """With a frozen clock the breaker is open exactly when the last `threshold` results
    before any rejection were failures; it never admits a call while open."""
    clock = Clock()
    breaker = CircuitBreaker("p", failure_threshold=threshold, reset_seconds=5, clock=clock)
    streak = 0
    for ok in outcomes:
        if streak >= threshold:
            assert state(breaker) == "open"
            with pytest.raises(ChannelUnavailable):
                breaker.acquire()
            continue
        assert state(breaker) == "closed"
        breaker.acquire()
        if ok:
            breaker.record_success()
            streak = 0
        else:
            breaker.record_failure()
            streak += 1


# ---- shared across execution environments ---------------------------------------------------


class MemoryShared:
    """The shared-state interface, in memory (the DynamoDB store is tested below)."""

    def __init__(self) -> None:
        self.until: float | None = None
        self.reads = 0

    def opened_until(self, name: str) -> float | None:
        self.reads += 1
        return self.until

    def open(self, name: str, until: float) -> None:
        self.until = max(self.until or 0.0, until)

    def close(self, name: str, now: float) -> None:
        if self.until is not None and self.until <= now:
            self.until = None


def test_an_opening_in_one_environment_is_seen_by_the_others(clock: Clock) -> None:
    shared = MemoryShared()
    mine, theirs = (
        CircuitBreaker("stripe", failure_threshold=2, reset_seconds=10, clock=clock, shared=shared)
        for _ in range(2)
    )
    fail(mine, 2)
    assert shared.until == clock.now + 10
    clock.now += 3
    with pytest.raises(ChannelUnavailable) as info:
        theirs.acquire()  # never failed itself
    assert info.value.retry_after == 7 and theirs.remaining_seconds() == 7
    clock.now += 7
    theirs.acquire()  # half-open trial
    theirs.record_success()
    assert shared.until is None and state(theirs) == "closed"


def test_shared_state_is_read_at_most_every_sync_interval(clock: Clock) -> None:
    shared = MemoryShared()
    breaker = CircuitBreaker(
        "stripe", failure_threshold=2, reset_seconds=10, clock=clock, shared=shared, sync_seconds=2
    )
    for _ in range(5):
        breaker.acquire()
    assert shared.reads == 1
    clock.now += 2
    breaker.acquire()
    assert shared.reads == 2


def test_an_unreachable_shared_store_never_blocks_a_call(clock: Clock) -> None:
    class Down:
        def opened_until(self, name: str) -> float | None:
            raise ConnectionError("dynamodb down")

        def open(self, name: str, until: float) -> None:
            raise ConnectionError("dynamodb down")

        def close(self, name: str, now: float) -> None:
            raise ConnectionError("dynamodb down")

    breaker = CircuitBreaker(
        "stripe", failure_threshold=1, reset_seconds=10, clock=clock, shared=Down()
    )
    breaker.acquire()
    breaker.record_failure()  # publishing fails quietly; the local state still opens
    assert state(breaker) == "open"


def test_dynamodb_store_keeps_the_latest_opening_and_clears_only_expired_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # left by emulator tests
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    from payments.store import clients
    from payments.store.breakers import BreakerStore

    with mock_aws():
        clients.reset()
        import boto3

        boto3.client("dynamodb", region_name="us-east-1").create_table(
            TableName="t",
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        store = BreakerStore("t")
        assert store.opened_until("stripe") is None
        store.open("stripe", 200.0)
        store.open("stripe", 150.0)  # an older opening never shortens a newer one
        assert store.opened_until("stripe") == 200.0
        store.close("stripe", now=199.0)  # not expired yet: someone re-opened it
        assert store.opened_until("stripe") == 200.0
        store.close("stripe", now=200.0)
        assert store.opened_until("stripe") is None
    clients.reset()
