"""A manual clock that shows who sleeps on it, and :func:`settle`, which waits until a
poller driven by one is idle: the poller's, the callbacks' and the demo's tests share them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio

from aio88 import PollerStats
from aio88.testing import ManualClock

__all__ = ["WatchedClock", "settle"]


class WatchedClock(ManualClock):
    """A manual clock that knows who sleeps on it and until when. The poller's leader
    sleeps on it until the next poll is due, so a test can tell that the poller is idle
    (:func:`settle`) without looking inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping: list[float] = []
        """The deadline of every sleeper, in no order."""

    async def sleep_until(self, deadline: float) -> None:
        self.sleeping.append(deadline)
        try:
            await super().sleep_until(deadline)
        finally:
            self.sleeping.remove(deadline)


async def settle(stats: Callable[[], PollerStats], clock: WatchedClock) -> None:
    """Let the poller finish what is due now: nothing in flight, and everyone who sleeps
    on the clock (the leader among them) sleeping until later than now, for a few turns
    of the event loop in a row with the same number of polls (a leader just woken takes
    a turn or two to pick up what is due)."""
    calm, polls = 0, stats().polls
    with anyio.fail_after(10):
        while calm < 4:
            await (asyncio.sleep(0) if calm else asyncio.sleep(0.001))
            now, seen = clock.now(), stats()
            idle = seen.in_flight == 0 and clock.sleeping and min(clock.sleeping) > now
            calm = calm + 1 if idle and seen.polls == polls else 0
            polls = seen.polls
