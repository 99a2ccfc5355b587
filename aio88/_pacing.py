"""The client's own rate budget (:class:`LocalRateBudget`): the in-process
:class:`~aio88._coordination.RateBudget`, used unless ``Client(fleet=...)`` shares one
between processes.

The arithmetic is :class:`~aio88._retry.AdaptiveRate`'s; this adds the one thing a leaf may
not do: sleep.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ._retry import AdaptiveRate

__all__ = ["LocalRateBudget"]


class LocalRateBudget:
    """A token bucket for one process's requests: ``rate`` per second with a burst of one
    second's worth, paused by a 429 and halved once per window, recovering with time and
    successes (see :class:`~aio88._retry.AdaptiveRate`). ``rate=None``: only the pause.

    Args:
        rate: Requests per second, or ``None``.
        clock: The transport's clock (monotonic seconds).
    """

    __slots__ = ("_clock", "_rate")

    def __init__(self, rate: float | None, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._rate = AdaptiveRate(rate, now=clock())

    @property
    def recovering(self) -> bool:
        """Whether a 429 lowered the rate and it has not grown back yet."""
        return self._rate.recovering

    async def wait_turn(self) -> None:
        """Take a token, sleeping if none is free, and past any pause a 429 asked for,
        also one that came while this call slept."""
        clock, rate = self._clock, self._rate
        delay = rate.reserve(clock())
        while delay > 0:
            await anyio.sleep(delay)
            delay = rate.paused_until - clock()

    def rate_limited(self, now: float, pause: float, sent_at: float) -> bool:
        """A 429 for a request sent at ``sent_at``: see :meth:`AdaptiveRate.on_rate_limited`."""
        return self._rate.on_rate_limited(now, pause, sent_at)

    def succeeded(self, now: float) -> None:
        """A request went through: give back a little of what a 429 took."""
        self._rate.on_success(now)
