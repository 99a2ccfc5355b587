"""The pure retry and pacing maths: no sleeping, fixed random numbers."""

from __future__ import annotations

import email.utils

import pytest

from aio88 import RetryPolicy
from aio88._config import CONGESTION_RECOVERY, RATE_FLOOR
from aio88._retry import (
    AdaptiveRate,
    backoff_delay,
    is_retryable_status,
    parse_retry_after,
    retry_delay,
    should_retry,
)

POLICY = RetryPolicy()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": " 0.5 "}, 0.5),
        ({"retry-after-ms": "oops", "Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "-1", "Retry-After": "3"}, 3.0),
        ({"Retry-After": "-4"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms first, then Retry-After seconds; junk is ignored."""
    assert parse_retry_after(headers, now=0.0) == expected


def test_parse_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date is relative to now."""
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": header}, now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now) == 0.0


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    """Ceiling doubles from backoff_initial up to backoff_max; the draw scales it."""
    ceilings = [backoff_delay(n, POLICY, rand=lambda: 1.0) for n in range(8)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert backoff_delay(3, POLICY, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, POLICY, rand=lambda: 0.25) == 1.0


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    """408, 409, 429 and 5xx are transient."""
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_permanent_statuses(status: int) -> None:
    """Client errors other than those are not."""
    assert not is_retryable_status(status)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # reads: every transient failure
        ({"idempotent": True, "status": 500}, True),
        ({"idempotent": True, "status": 429}, True),
        ({"idempotent": True, "status": 404}, False),
        ({"idempotent": True}, True),  # timeout / broken connection
        # creates: only when the server provably did nothing
        ({"idempotent": False, "status": 429}, True),
        ({"idempotent": False, "status": 500}, False),
        ({"idempotent": False, "status": 503}, False),
        ({"idempotent": False, "status": 408}, False),
        ({"idempotent": False}, False),  # timeout after sending: may have been billed
        ({"idempotent": False, "request_sent": False}, True),  # connect failure
        # the server's explicit word
        ({"idempotent": True, "status": 500, "server_says": "false"}, False),
        ({"idempotent": True, "status": 400, "server_says": "true"}, True),
        ({"idempotent": False, "status": 400, "server_says": "true"}, False),
    ],
)
def test_should_retry_rules(kwargs: dict[str, object], expected: bool) -> None:
    """Reads retry on any transient failure; creates only when provably unprocessed."""
    assert should_retry(attempt=1, policy=POLICY, **kwargs) is expected  # type: ignore[arg-type]


def test_unsafe_creates_opt_in() -> None:
    """retry_unsafe_creates lets a create retry after a 5xx or a timeout."""
    brave = RetryPolicy(retry_unsafe_creates=True)
    assert should_retry(attempt=1, policy=brave, idempotent=False, status=500)
    assert should_retry(attempt=1, policy=brave, idempotent=False)


def test_attempts_are_bounded() -> None:
    """No retry once the attempts are used up."""
    assert not should_retry(attempt=POLICY.attempts, policy=POLICY, idempotent=True, status=500)
    assert not should_retry(attempt=1, policy=RetryPolicy(attempts=1), idempotent=True)


def test_retry_delay_honours_and_caps_retry_after() -> None:
    """The server's Retry-After wins; past the cap, the error is raised instead."""
    assert retry_delay(0, POLICY, 3.0) == 3.0
    assert retry_delay(0, POLICY, POLICY.retry_after_max + 1) is None
    assert retry_delay(2, POLICY, None, rand=lambda: 1.0) == 2.0


def test_policy_validation() -> None:
    """Nonsense policies are refused with a clear message."""
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(backoff_max=-1)


def test_bucket_allows_burst_then_paces() -> None:
    """A full bucket lets `burst` requests go at once, then one per 1/rate seconds."""
    bucket = AdaptiveRate(10.0, burst=3, now=0.0)
    waits = [bucket.reserve(0.0) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.1)
    assert waits[4] == pytest.approx(0.2)
    # Time passes: tokens refill up to the burst, no more.
    assert bucket.reserve(10.0) == 0.0


def test_unlimited_bucket_only_pauses() -> None:
    """With no rate, only a 429's pause delays anyone."""
    bucket = AdaptiveRate(None)
    assert bucket.reserve(0.0) == 0.0
    bucket.on_rate_limited(now=1.0, pause=2.0)
    assert bucket.reserve(1.5) == pytest.approx(1.5)
    assert bucket.reserve(3.0) == 0.0
    assert bucket.current_rate(3.0) is None


def test_429_halves_the_rate_once_per_window_and_time_restores_it() -> None:
    """Multiplicative decrease on a 429, but once per window: the 429s of requests sent
    before it was acted on only extend the pause. Growth with successes and with time;
    never below the floor, never past the rate."""
    bucket = AdaptiveRate(64.0, now=0.0)
    assert bucket.on_rate_limited(now=1.0, pause=1.0, sent_at=0.9)
    assert bucket.current_rate(1.0) == 32.0
    assert bucket.paused_until == 2.0
    # Ten more 429s, all for requests sent before 1.0: the same window.
    for i in range(10):
        assert not bucket.on_rate_limited(now=1.01 + i / 100, pause=1.5, sent_at=0.95)
    assert bucket.current_rate(1.1) == pytest.approx(32.0, rel=0.05)
    assert bucket.paused_until == pytest.approx(1.1 + 1.5)
    # Requests sent after it: new windows, down to the floor.
    for i in range(10):
        bucket.on_rate_limited(now=2.0 + i / 1000, pause=0.0, sent_at=2.0 + i / 1000)
    floor = 64.0 * RATE_FLOOR
    assert bucket.current_rate(2.009) == pytest.approx(floor, rel=0.01)
    # Time alone brings it back, within CONGESTION_RECOVERY.
    assert bucket.current_rate(2.009 + CONGESTION_RECOVERY / 2) == pytest.approx(
        (floor + 64.0) / 2, rel=0.01
    )
    assert bucket.current_rate(2.01 + CONGESTION_RECOVERY) == 64.0
    for _ in range(10_000):
        bucket.on_success(30.0)
    assert bucket.current_rate(30.0) == 64.0


def test_bucket_rejects_bad_rate() -> None:
    """rate_limit must be positive."""
    with pytest.raises(ValueError, match="positive"):
        AdaptiveRate(0)
