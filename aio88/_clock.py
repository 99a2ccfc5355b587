"""Time as the poller sees it: the event loop's clock, or a test's manual one.

This module is a leaf: it imports nothing from aio88.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

import anyio

__all__ = ["LOOP_CLOCK", "Clock", "LoopClock"]


class Clock(Protocol):
    """What the poller needs of time. The default is the event loop's clock;
    ``aio88.testing.ManualClock`` is one that moves only when a test says so."""

    def now(self) -> float:
        """The current time in seconds (any origin)."""

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``."""


class LoopClock:
    """The event loop's clock. aiohttp runs on asyncio only, so this reads asyncio's
    loop time directly (``anyio.current_time`` would look the backend up each call)."""

    def now(self) -> float:
        """The event loop's time."""
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the loop's time reaches ``deadline``."""
        if deadline == math.inf:
            await anyio.sleep_forever()
        await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))


LOOP_CLOCK = LoopClock()
