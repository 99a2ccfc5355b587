"""A rate budget every process of a fleet shares, kept in PostgreSQL.

One row of ``aio88_rates`` per budget (``name``: a digest of the API key and origin) holds
a token bucket, the 429 pause and the adaptive rate, all timed by the database's clock
(``clock_timestamp()``), the one clock every process agrees on. The sum over all
processes stays within ``rate * T + rate`` requests in any window of ``T`` seconds:

- A process takes tokens in blocks (``aio88_take``, one round trip), at most
  ``ceil(rate * FLEET_RATE_BLOCK)`` and no more than it has callers waiting; the bucket
  may go below zero, and the block is due when its last token would have come.
- A block's tokens are used from when they are due until ``FLEET_RATE_HOLD`` seconds
  later, then dropped. Tokens used up to that late could join a window that the bucket
  counted without them; so the bucket holds ``rate * (1 - FLEET_RATE_HOLD)`` instead of
  ``rate`` (but at least one token), and the bound holds for the tokens as they are used.
- A 429 (:meth:`FleetRateBudget.rate_limited`) is acted on locally at once (the pause,
  held tokens dropped), and in the background in the database (``aio88_signal``): the
  pause is stored in the row, the rate halved once per window (judged in the database's
  time from the request's age), and every process told by ``NOTIFY aio88_rate``. A
  process that missed the notification sees the pause at its next block.
- The rate grows back as :class:`~aio88._congestion.Congestion` does: with time (floor
  to ceiling in ``CONGESTION_RECOVERY`` seconds) and with successes, which a recovering
  budget sends every ``FLEET_SUCCESS_FLUSH`` seconds.

With ``rate=None`` there is no steady limit: :meth:`~FleetRateBudget.wait_turn` does no
I/O and only the shared pause applies (re-read now and then in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from .._config import (
    CONGESTION_RECOVERY,
    FLEET_PAUSE_REFRESH,
    FLEET_RATE_BLOCK,
    FLEET_RATE_HOLD,
    FLEET_SUCCESS_FLUSH,
    RATE_FLOOR,
)
from .._errors import RateBudgetUnavailableError
from .._retry import backoff_delay, half_jitter
from ._errors import DB_ERRORS, RECONNECT_BACKOFF

__all__ = ["FleetRateBudget", "RateNotice", "parse_notice"]

log = logging.getLogger("aio88.fleet")

#: Runs a coroutine in the background, in a task the fleet owns (and ends when it closes).
Spawn = Callable[[Coroutine[Any, Any, object]], object]
#: The longest age of a request the database is told (a request "sent at -inf" is older
#: than any signal; ``make_interval`` takes no infinity).
_MAX_AGE = 1e9


class RateNotice:
    """A ``NOTIFY aio88_rate`` as received: budget ``name`` is paused for ``paused``
    seconds from now, and its rate was last halved ``signalled`` seconds ago."""

    __slots__ = ("name", "paused", "signalled")

    def __init__(self, name: str, paused: float, signalled: float) -> None:
        self.name = name
        self.paused = paused
        self.signalled = signalled


def parse_notice(payload: str) -> RateNotice | None:
    """The notice in ``payload``, or ``None`` if it is not one (logged)."""
    try:
        data = json.loads(payload)
        return RateNotice(str(data["name"]), float(data["paused"]), float(data["signalled"]))
    except (ValueError, KeyError, TypeError):
        log.warning("aio88 fleet: ignored a malformed rate notification %.200r", payload)
        return None


class FleetRateBudget:
    """One process's share of the fleet's rate budget ``name`` (implements
    :class:`aio88._coordination.RateBudget`). Made by ``Fleet.rate_budget``.

    Args:
        pool: The fleet's connection pool.
        name: The budget's key in ``aio88_rates``.
        rate: Requests per second for the whole fleet; ``None``: only the 429 pause.
        clock: The caller's clock (seconds); every time passed in is in it.
        spawn: Runs the database work of the non-blocking methods in the background.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        name: str,
        rate: float | None,
        clock: Callable[[], float],
        spawn: Spawn,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate_limit must be a positive number of requests/s, got {rate}")
        self._pool = pool
        self.name = name
        self.rate = rate
        self._clock = clock
        self._spawn = spawn
        #: What the bucket holds (see the module's docstring).
        self.capacity = max(1.0, rate * (1 - FLEET_RATE_HOLD)) if rate is not None else 0.0
        #: The most tokens one round trip takes.
        self.block = max(1, math.ceil(rate * FLEET_RATE_BLOCK)) if rate is not None else 0
        self._floor = rate * RATE_FLOOR if rate is not None else 0.0
        # The block in hand: how many tokens are left, from when and until when they count.
        self._left = 0
        self._due = 0.0
        self._expires = 0.0
        self._unused = 0  # tokens of expired blocks, given back with the next take
        self._paused_until = -math.inf
        self._signalled_at = -math.inf
        self._lowered_until = -math.inf
        self._waiting = 0
        self._taking: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()
        self._successes = 0
        self._refreshed = -math.inf
        #: Round trips made for blocks (for measurements and tests).
        self.round_trips = 0
        # While the database is out of reach: no new try before this time (backoff), so
        # that every waiting request does not open a connection of its own.
        self._unreachable: str | None = None  # why the last try failed
        self._retry_at = -math.inf
        self._failures = 0

    # -- the RateBudget protocol -----------------------------------------------------------

    @property
    def recovering(self) -> bool:
        """Whether a 429 lowered the rate and it has not grown back yet (as far as this
        process has heard)."""
        return self._clock() < self._lowered_until

    async def wait_turn(self) -> None:
        """Return when one more request may be sent: a token of the fleet's is ours and
        no 429's pause is in force (also one that began while this call slept).

        Raises:
            RateBudgetUnavailableError: The database did not answer when a block was
                needed (an APIConnectionError: nothing was sent, a poll backs off, a
                create is known not made).
        """
        self._waiting += 1
        try:
            while True:
                now = self._clock()
                if self._paused_until > now:
                    await self._sleep(self._paused_until - now)
                    continue
                if self.rate is None:
                    if now - self._refreshed >= FLEET_PAUSE_REFRESH:
                        self._refreshed = now
                        self._spawn(self.refresh())
                    return
                if self._left > 0 and now <= self._expires:
                    if now < self._due:
                        await self._sleep(self._due - now)
                        continue
                    self._left -= 1
                    return
                self._unused += self._left  # given back by the next take
                self._left = 0
                taking = self._taking
                # A take that is done but whose callback has not run yet is spent too:
                # awaiting it again would return at once, and this loop would spin.
                if taking is None or taking.done():
                    taking = asyncio.ensure_future(self._take(min(self.block, self._waiting)))
                    taking.add_done_callback(self._taken)
                    self._taking = taking
                await asyncio.shield(taking)
        finally:
            self._waiting -= 1

    def rate_limited(self, now: float, pause: float, sent_at: float) -> bool:
        """A 429 came for a request sent at ``sent_at``: pause here at once, and in the
        background pause and slow every process (see the module's docstring). Returns
        whether it counted as a new signal, as far as this process knows."""
        self._pause(now + pause)
        counted = sent_at >= self._signalled_at
        if counted:
            self._signalled_at = now
            if self.rate is not None:
                self._lowered_until = max(self._lowered_until, now + CONGESTION_RECOVERY)
        self._spawn(self._signal(now, pause, sent_at))
        return counted

    def succeeded(self, now: float) -> None:
        """A request went through: while the rate is lowered, count it towards the
        next batch of successes sent to the database."""
        if self.rate is None or now >= self._lowered_until:
            return
        self._successes += 1
        if self._successes == 1:
            self._spawn(self._flush_successes())

    @property
    def paused_until(self) -> float:
        """Until when (the caller's clock) this process knows every request is paused."""
        return self._paused_until

    # -- from the fleet --------------------------------------------------------------------

    def notice(self, notice: RateNotice) -> None:
        """A process (this one too) told the fleet of a 429 for this budget."""
        now = self._clock()
        if notice.paused > 0:
            self._pause(now + notice.paused)
        self._signalled_at = max(self._signalled_at, now - notice.signalled)
        if self.rate is not None and notice.signalled < CONGESTION_RECOVERY:
            self._lowered_until = max(
                self._lowered_until, now - notice.signalled + CONGESTION_RECOVERY
            )

    async def refresh(self) -> None:
        """Re-read the pause from the database (after a reconnect: a notification may
        have been lost). Never raises: errors are logged."""
        try:
            paused = await self._pool.fetchval("SELECT aio88_paused($1)", self.name)
        except DB_ERRORS as exc:
            log.warning("aio88 fleet: could not read the rate budget's pause: %s", exc)
            return
        if paused:
            self._pause(self._clock() + float(paused))

    # -- inside ----------------------------------------------------------------------------

    def _pause(self, until: float) -> None:
        if until > self._paused_until:
            self._paused_until = until
        self._unused += self._left  # held tokens would go out after the pause: given back
        self._left = 0
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a pause or a new block changes the picture."""
        changed = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout=seconds)

    async def _take(self, want: int) -> None:
        assert self.rate is not None
        sent = self._clock()
        if self._unreachable is not None and sent < self._retry_at:
            # The last try failed a moment ago: not again yet (a new exception each time:
            # one raised again and again would grow its traceback).
            raise RateBudgetUnavailableError(self._unreachable, request_sent=False)
        try:
            unused, self._unused = self._unused, 0
            row = await self._pool.fetchrow(
                "SELECT * FROM aio88_take($1, $2, $3, $4, $5, $6, $7)",
                self.name,
                self.rate,
                want,
                self.capacity,
                self._floor,
                CONGESTION_RECOVERY,
                unused,
            )
        except DB_ERRORS as exc:
            # A connection error to the caller, with nothing sent: a poll backs off and
            # tries again, a create is known not to have been made (never unconfirmed).
            self._unreachable = (
                f"the fleet's database did not hand out a rate token: {type(exc).__name__}: {exc}"
            )
            delay = backoff_delay(self._failures, RECONNECT_BACKOFF, half_jitter)
            self._retry_at = self._clock() + delay
            self._failures += 1
            raise RateBudgetUnavailableError(self._unreachable, request_sent=False) from exc
        self._unreachable, self._failures = None, 0
        self.round_trips += 1
        assert row is not None
        received = self._clock()
        due = float(row["due"])
        paused = float(row["paused"])
        if paused > 0:  # a pause this process had not heard of
            self._paused_until = max(self._paused_until, received + paused)
        self._lowered_until = received + float(row["lowered_for"])
        self._left = want
        self._due = received + due
        # Used at most HOLD after it was due, counted from when the take was sent (what
        # the bound needs); a round trip slower than HOLD / 2 still leaves half of HOLD,
        # so a slow database slows the fleet down instead of jamming it (each dropped
        # block is debt every process pays).
        self._expires = max(sent + due + FLEET_RATE_HOLD, received + due + FLEET_RATE_HOLD / 2)

    def _taken(self, future: asyncio.Future[None]) -> None:
        if self._taking is future:
            self._taking = None
        if not future.cancelled():
            future.exception()  # retrieved here: the waiters got it, if any were left
        self._wake()

    async def _signal(self, now: float, pause: float, sent_at: float) -> None:
        delay = max(0.0, self._clock() - now)
        age = min(_MAX_AGE, max(0.0, now - sent_at))
        try:
            await self._pool.fetchval(
                "SELECT aio88_signal($1, $2, $3, $4, $5, $6, $7)",
                self.name,
                self.rate,
                self._floor,
                CONGESTION_RECOVERY,
                delay,
                age,
                pause,
            )
        except DB_ERRORS as exc:
            log.warning("aio88 fleet: could not share a 429's pause: %s", exc)

    async def _flush_successes(self) -> None:
        await asyncio.sleep(FLEET_SUCCESS_FLUSH)
        count, self._successes = self._successes, 0
        try:
            await self._pool.fetchval(
                "SELECT aio88_succeeded($1, $2, $3, $4)",
                self.name,
                count,
                self._floor,
                CONGESTION_RECOVERY,
            )
        except DB_ERRORS as exc:
            log.warning("aio88 fleet: could not report successes: %s", exc)
