"""How the fleet logs a database outage: the first failure, then at most one line per
``every`` seconds with a count, and one line when it is back, instead of a line per
failed statement (a process with many pollers sends several a second)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .._config import FLEET_OUTAGE_LOG_EVERY

__all__ = ["OutageLog"]


class OutageLog:
    """Logs the fleet's database failures as outages: :meth:`failed` for each failed
    statement, :meth:`ok` for each one that went through. Shared by the fleet's parts
    (the heartbeat, the leases), so one outage is one story in the log.

    Args:
        log: Where the lines go.
        what: The database, as the recovery's line names it.
        retrying: How it is retried, as the first line says it.
        every: Seconds between the "still failing" lines.
        clock: Monotonic seconds (a manual clock in tests).
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        what: str = "the fleet's database",
        retrying: str = "on each heartbeat",
        every: float = FLEET_OUTAGE_LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._what = what
        self._retrying = retrying
        self._every = every
        self._clock = clock
        self._since: float | None = None  # when the outage began (None: no outage)
        self._last_line = 0.0
        self._failures = 0  # in the outage
        self._unlogged = 0  # since the last line

    @property
    def down(self) -> bool:
        """Whether the last statement failed (an outage goes on)."""
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        """A statement failed with ``exc``: logged if it is the first of an outage, or if
        the last line is ``every`` seconds old (with how many failed meanwhile)."""
        now = self._clock()
        self._failures += 1
        self._unlogged += 1
        reason = f"{type(exc).__name__}: {exc}"
        if self._since is None:
            self._since = self._last_line = now
            self._unlogged = 0
            self._log.warning(
                "aio88 fleet: the database failed (%s); retrying %s "
                "(at most one line per %.0f s until it is back)",
                reason,
                self._retrying,
                self._every,
            )
        elif now - self._last_line >= self._every:
            self._log.warning(
                "aio88 fleet: the database still fails after %.0f s (%d failures since the "
                "last line; %s); retrying",
                now - self._since,
                self._unlogged,
                reason,
            )
            self._last_line = now
            self._unlogged = 0

    def ok(self) -> None:
        """A statement went through: if an outage went on, say that it ended."""
        if self._since is None:
            return
        self._log.warning(
            "aio88 fleet: %s is back after %.0f s (%d failures)",
            self._what,
            self._clock() - self._since,
            self._failures,
        )
        self._since = None
        self._failures = self._unlogged = 0
