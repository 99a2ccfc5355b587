"""How much of a ceiling to use now, after 429s: TCP's rules for a poller's concurrency and
a client's request rate.

A 429 halves the amount in use, but at most once per window: the answers to requests
that were already in flight when the decrease was decided say nothing new, so a 429 counts
only for a request sent after the last decrease (the window is one round trip, measured
by the requests themselves). The amount grows back with each success (one unit per
window of successes, as TCP's additive increase) and with time alone (from the floor to
the ceiling in ``recovery`` seconds), so that a poller left idle after a burst returns to
what it was configured for. It never goes below ``floor``: a batch keeps moving.

Pure arithmetic on the caller's clock: nothing here reads a clock or sleeps.
"""

from __future__ import annotations

import math

__all__ = ["Congestion"]


class Congestion:
    """An amount between ``floor`` and ``ceiling``, lowered by congestion signals.

    Args:
        ceiling: The configured amount (a concurrency, a rate).
        floor: The least it goes down to.
        recovery: Seconds to grow back from ``floor`` to ``ceiling`` with time alone.
        now: The caller's clock now.
    """

    __slots__ = ("_amount", "_grow_per_second", "_since", "ceiling", "decreased_at", "floor")

    def __init__(self, ceiling: float, *, floor: float, recovery: float, now: float) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError(f"need 0 < floor <= ceiling, got {floor} and {ceiling}")
        self.ceiling = ceiling
        self.floor = floor
        self._grow_per_second = (ceiling - floor) / recovery if recovery > 0 else math.inf
        self._amount = ceiling
        self._since = now
        self.decreased_at = -math.inf
        """When the last decrease was decided; a 429 for a request sent before it is part
        of the same window."""

    @property
    def lowered(self) -> bool:
        """Whether a signal lowered it and it has not been seen back at the ceiling since
        (a cheap test for hot paths, before :meth:`current`)."""
        return self._amount < self.ceiling

    def current(self, now: float) -> float:
        """The amount in force at ``now`` (time's growth included)."""
        if self._amount >= self.ceiling:
            return self.ceiling
        grown = self._amount + (now - self._since) * self._grow_per_second
        if grown < self.ceiling:
            return grown
        self._amount = self.ceiling  # back at the ceiling: `lowered` is False again
        return self.ceiling

    def signal(self, now: float, sent_at: float) -> bool:
        """A congestion signal (a 429) for a request sent at ``sent_at``. Halves the amount
        if that request was sent after the last decrease; returns whether it did."""
        if sent_at < self.decreased_at:
            return False
        self._amount = max(self.floor, self.current(now) / 2)
        self._since = self.decreased_at = now
        return True

    def success(self, now: float) -> None:
        """A request went through: one more unit per window of successes."""
        amount = self.current(now)
        if amount < self.ceiling:
            self._amount = min(self.ceiling, amount + 1.0 / max(amount, 1.0))
            self._since = now

    def time_until(self, amount: float, now: float) -> float:
        """Seconds until time alone brings the amount to ``amount`` (0 if it is there;
        ``inf`` if it never will)."""
        current = self.current(now)
        if current >= amount:
            return 0.0
        if amount > self.ceiling:
            return math.inf
        return (amount - current) / self._grow_per_second
