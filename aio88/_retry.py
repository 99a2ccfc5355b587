"""The maths of retrying and pacing, as pure functions: no I/O, no sleeping.

The request path in ``_http`` asks these functions *whether* and *how long*; it alone
sleeps. Tests call them with fixed random numbers and clocks.

This module is a leaf: it imports only the other leaves it builds on (the defaults in
``_config`` and the arithmetic of ``_congestion``); the policy is duck-typed.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from typing import Protocol

from ._config import CONGESTION_RECOVERY, RATE_FLOOR
from ._congestion import Congestion

__all__ = [
    "AdaptiveRate",
    "backoff_delay",
    "half_jitter",
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


def half_jitter() -> float:
    """A ``rand`` for :func:`backoff_delay` that never draws below half the ceiling: for a
    loop that waits for a server to come back, which must not spin at ~0 s."""
    return random.uniform(0.5, 1.0)


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
    halves the rate, once per window: a 429 for a request sent before the last one was
    acted on was in flight already and adds nothing. The rate grows back with successes
    and with time (:class:`~aio88._congestion.Congestion`), never below ``RATE_FLOOR``.

    With ``rate=None`` there is no steady limit: only the shared pause after a 429.
    All times are in the caller's clock; nothing here reads a clock or sleeps.
    """

    __slots__ = (
        "_congestion",
        "_signalled_at",
        "_stamp",
        "_tokens",
        "burst",
        "paused_until",
        "rate",
    )

    def __init__(self, rate: float | None, burst: float | None = None, now: float = 0.0) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate_limit must be a positive number of requests/s, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate or 1.0)
        self._congestion = (
            None
            if rate is None
            else Congestion(rate, floor=rate * RATE_FLOOR, recovery=CONGESTION_RECOVERY, now=now)
        )
        self._tokens = self.burst
        self._stamp = now
        self._signalled_at = -math.inf
        #: No request may start before this time (a 429's ``Retry-After``).
        self.paused_until = 0.0

    @property
    def recovering(self) -> bool:
        """Whether a 429 lowered the rate and it is not back yet."""
        return self._congestion is not None and self._congestion.lowered

    def current_rate(self, now: float) -> float | None:
        """The rate in force at ``now``, lowered after a 429; ``None`` when unlimited."""
        return None if self._congestion is None else self._congestion.current(now)

    def reserve(self, now: float) -> float:
        """Take a token; return how many seconds to wait before using it (0 = go now)."""
        wait = self.paused_until - now if self.paused_until > now else 0.0
        if self._congestion is None:
            return wait
        rate = self._congestion.current(now)
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

    def on_rate_limited(self, now: float, pause: float, sent_at: float = math.inf) -> bool:
        """A 429 arrived for a request sent at ``sent_at``: pause everyone for ``pause``
        seconds and halve the rate, unless that request was sent before the last 429 was
        acted on (then it only extends the pause to its own ``Retry-After``). Returns
        whether it counted as a new signal.

        ``pause`` is the server's ``Retry-After``, or the caller's backoff when it sent none.
        """
        self.paused_until = max(self.paused_until, now + pause)
        if sent_at < self._signalled_at:
            return False
        self._signalled_at = now
        if self._congestion is not None:
            self._congestion.signal(now, sent_at)
            self._tokens = min(self._tokens, 0.0)
        return True

    def on_success(self, now: float) -> None:
        """A request succeeded: give back a little of the rate a 429 took away."""
        if self._congestion is not None and self._signalled_at != -math.inf:
            self._congestion.success(now)
