"""The maths of retrying and pacing, as pure functions: no I/O, no sleeping.

The request path in ``_http`` asks these functions *whether* and *how long*; it alone
sleeps. Tests call them with fixed random numbers and clocks.

This module is a leaf: it imports nothing from aio88 (the policy is duck-typed).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = [
    "AdaptiveRate",
    "backoff_delay",
    "is_retryable_status",
    "parse_retry_after",
    "retry_delay",
    "should_retry",
]

#: Statuses on which a read is worth trying again.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Policy(Protocol):
    @property
    def attempts(self) -> int: ...
    @property
    def backoff_initial(self) -> float: ...
    @property
    def backoff_max(self) -> float: ...
    @property
    def retry_after_max(self) -> float: ...
    @property
    def retry_unsafe_creates(self) -> bool: ...


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status is transient: 408, 409, 429 or any 5xx."""
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asked us to wait, or ``None`` when it did not say.

    Reads ``retry-after-ms`` (milliseconds, OpenAI's), then ``Retry-After`` as seconds or
    as an HTTP-date (relative to ``now``, a Unix time). A malformed value is ignored.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            pass
        else:
            if ms >= 0:
                return ms / 1000.0
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - now)
    return seconds if seconds >= 0 else None


def backoff_delay(
    attempt: int, policy: _Policy, rand: Callable[[], float] = random.random
) -> float:
    """Capped exponential backoff with full jitter for retry number ``attempt`` (0-based).

    The ceiling is ``backoff_initial * 2**attempt``, capped at ``backoff_max``; the delay
    is a uniform draw below it, so a fleet of clients that failed together spreads out.
    """
    ceiling = min(policy.backoff_max, policy.backoff_initial * (2.0**attempt))
    return ceiling * rand()


def should_retry(
    *,
    attempt: int,
    policy: _Policy,
    idempotent: bool,
    status: int | None = None,
    request_sent: bool = True,
    server_says: str | None = None,
) -> bool:
    """Whether the request that just failed may be tried again.

    Args:
        attempt: How many tries were made so far (1 after the first).
        policy: The retry policy.
        idempotent: True for reads (GET, HEAD); False for creates.
        status: The HTTP status, or ``None`` for a transport failure.
        request_sent: For a transport failure, whether any of the request may have left.
        server_says: The ``x-should-retry`` header, if any: ``"false"`` always wins.
    """
    if attempt >= policy.attempts or server_says == "false":
        return False
    if status is None:
        # A connection that failed before sending anything cannot have created a task.
        return idempotent or not request_sent or policy.retry_unsafe_creates
    if status == 429:
        return True  # the server refused before doing any work
    if not idempotent and not policy.retry_unsafe_creates:
        return False
    return server_says == "true" or is_retryable_status(status)


def retry_delay(
    attempt: int,
    policy: _Policy,
    retry_after: float | None,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """How long to sleep before retry number ``attempt`` (0-based).

    Honours the server's ``retry_after`` when it gave one; returns ``None`` (do not retry)
    when it asks for longer than ``policy.retry_after_max``.
    """
    if retry_after is not None:
        if retry_after > policy.retry_after_max:
            return None
        return retry_after
    return backoff_delay(attempt, policy, rand)


class AdaptiveRate:
    """A token bucket shared by every request, which slows down on 429 and recovers.

    ``rate`` tokens per second refill a bucket holding at most ``burst``. Each request
    takes one token; :meth:`reserve` says how long the caller must wait for it. A 429
    (:meth:`on_rate_limited`) pauses everyone until the server's ``Retry-After`` and
    halves the rate; each success then adds back a small share of the configured rate
    until it is whole again (additive increase, multiplicative decrease).

    With ``rate=None`` there is no steady limit: only the shared pause after a 429.
    All times are in the caller's clock; nothing here reads a clock or sleeps.
    """

    __slots__ = ("_factor", "_rate", "_stamp", "_tokens", "burst", "paused_until", "rate")

    #: The slowest the bucket goes after repeated 429s, as a share of ``rate``.
    MIN_FACTOR = 1 / 16
    #: How much of the configured rate each success gives back after a 429.
    RECOVERY_STEP = 1 / 64

    def __init__(self, rate: float | None, burst: float | None = None, now: float = 0.0) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate_limit must be a positive number of requests/s, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate or 1.0)
        self._factor = 1.0
        self._rate = rate
        self._tokens = self.burst
        self._stamp = now
        #: No request may start before this time (a 429's ``Retry-After``).
        self.paused_until = 0.0

    @property
    def current_rate(self) -> float | None:
        """The rate in force now, lowered after a 429; ``None`` when unlimited."""
        return self._rate

    def reserve(self, now: float) -> float:
        """Take a token; return how many seconds to wait before using it (0 = go now)."""
        wait = self.paused_until - now if self.paused_until > now else 0.0
        rate = self._rate
        if rate is None:
            return wait
        start = now + wait
        elapsed = start - self._stamp
        tokens = self._tokens + elapsed * rate if elapsed > 0 else self._tokens
        if tokens > self.burst:
            tokens = self.burst
        if elapsed > 0:
            self._stamp = start
        tokens -= 1.0
        self._tokens = tokens
        if tokens >= 0:
            return wait
        return wait + (-tokens) / rate

    def on_rate_limited(self, now: float, pause: float) -> None:
        """A 429 arrived: pause everyone for ``pause`` seconds and halve the rate.

        ``pause`` is the server's ``Retry-After``, or the caller's backoff when it sent none.
        """
        self.paused_until = max(self.paused_until, now + pause)
        if self.rate is not None:
            self._factor = max(self.MIN_FACTOR, self._factor / 2)
            self._rate = self.rate * self._factor
            self._tokens = min(self._tokens, 0.0)

    def on_success(self) -> None:
        """A request succeeded: give back a little of the rate a 429 took away."""
        if self._factor < 1.0 and self.rate is not None:
            self._factor = min(1.0, self._factor + self.RECOVERY_STEP)
            self._rate = self.rate * self._factor
