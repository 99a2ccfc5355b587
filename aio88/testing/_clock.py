"""The manual clock: time that moves only when a test says so."""

from __future__ import annotations

import asyncio

__all__ = ["ManualClock"]


class ManualClock:
    """A clock that moves only when told to, so schedules and deadlines are tested
    without sleeping.

    Give the same clock to the emulator and to the client's poller; then
    ``clock.advance(30)`` makes 30 seconds pass for every task and every deadline::

        clock = ManualClock()
        async with Emulator(clock=clock) as emu, Client(...) as client:
            async with client.watch(ids, clock=clock, timeout=600) as outcomes:
                clock.advance(601)   # every unfinished task times out now
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        # Made on demand and replaced on every advance: one event per "the time moved",
        # so a sleeper woken by an old advance never waits on an event already set.
        self._moved: asyncio.Event | None = None

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        """The current time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking whoever sleeps until then."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    async def sleep_until(self, deadline: float) -> None:
        """Return once the clock has been advanced to ``deadline`` (at once if it has)."""
        while self._now < deadline:
            if self._moved is None:
                self._moved = asyncio.Event()
            await self._moved.wait()
        await asyncio.sleep(0)  # a checkpoint, as a real sleep would be
