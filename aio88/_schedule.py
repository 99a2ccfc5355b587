"""When to poll: :class:`Schedule`, and the delay before a task's next poll.

Pure decisions on numbers: the poller and the schedule benchmark both decide through
:func:`plan_delay`. This module is a leaf: it imports only :mod:`aio88._models`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol

from ._models import Status

__all__ = ["DOCS_TIERS", "ProgressState", "Schedule", "estimate_eta", "plan_delay"]

#: The 88API docs' polling tiers: (task age below which, delay between polls).
DOCS_TIERS: tuple[tuple[float, float], ...] = ((30.0, 5.0), (120.0, 10.0), (math.inf, 30.0))


def estimate_eta(
    anchor_time: float, anchor_progress: int, now: float, progress: int
) -> float | None:
    """Seconds until a task reaches 100 %, from its progress rate since an anchor point.

    Returns ``None`` while progress has not moved since the anchor (no rate to go on).
    """
    if progress <= anchor_progress or now <= anchor_time:
        return None
    rate = (progress - anchor_progress) / (now - anchor_time)
    return (100 - progress) / rate


class ProgressState(Protocol):
    """What :func:`plan_delay` reads and updates of a task being polled."""

    started: float
    polls: int
    anchor_t: float
    anchor_p: int


def plan_delay(
    schedule: Schedule,
    state: ProgressState,
    now: float,
    status: Status,
    progress: int | None,
    hint: float | None,
    rand: Callable[[], float] = random.random,
) -> float:
    """The delay before a pending task's next poll, given what the last poll saw.

    The first in-progress observation anchors the progress rate; later ones estimate the
    finish from it. The poller and the schedule benchmark both decide through here.
    """
    eta = None
    if progress is not None and status is Status.IN_PROGRESS:
        if state.anchor_p < 0:
            state.anchor_t, state.anchor_p = now, progress
        else:
            eta = estimate_eta(state.anchor_t, state.anchor_p, now, progress)
    return schedule.next_delay(now - state.started, state.polls, hint, rand, eta)


class Schedule:
    """When to poll a task: the delay before the first poll and between polls.

    The default follows the 88API docs: first poll after about 2 s, then every 5 s until
    the task is 30 s old, every 10 s until 2 min, every 30 s after. Each delay is spread
    by ±10 % jitter so that thousands of tasks never poll in lock-step, and a server hint
    (``openai-poll-after-ms``, or ``Retry-After`` on a 200) wins whenever a response
    carries one.

    When the server reports ``progress``, the schedule estimates the finish from the
    progress rate and polls near it instead: fewer requests while the end is far, and an
    earlier answer when it comes. Past the estimate it polls at ``floor``, backing off to
    the tiers again. ``docs/benchmarks.md`` shows the effect on requests per task and
    detection delay, and how the defaults below were chosen.

    Args:
        first: Seconds before the first poll of a task just created.
        tiers: ``(age_below, delay)`` pairs in increasing age; the last must cover ``inf``.
        jitter: The relative spread of each delay (0.1 = ±10 %).
        floor: The shortest delay ever used, whatever a hint or an estimate says.
        use_server_hint: Whether to follow the server's poll-after hints.
        progress_aware: Whether to poll near the finish estimated from progress.
        aim: Where to poll relative to the estimated finish (0.7 = 70 % of the way there).
        stretch: The longest silence the estimate may impose, as a multiple of the tier.

    Use :meth:`fixed` for a constant interval, :meth:`backoff` for geometric growth and
    :meth:`fallback` for tasks whose completion comes by callback.
    """

    __slots__ = (
        "_factor",
        "aim",
        "first",
        "floor",
        "jitter",
        "progress_aware",
        "stretch",
        "tiers",
        "use_server_hint",
    )

    def __init__(
        self,
        *,
        first: float = 2.0,
        tiers: tuple[tuple[float, float], ...] = DOCS_TIERS,
        jitter: float = 0.1,
        floor: float = 1.0,
        use_server_hint: bool = True,
        progress_aware: bool = True,
        aim: float = 0.7,
        stretch: float = 2.0,
    ) -> None:
        if not tiers or tiers[-1][0] != math.inf:
            raise ValueError("Schedule tiers must end with an (inf, delay) tier")
        if not 0 <= jitter < 1:
            raise ValueError(f"Schedule jitter must be in [0, 1), got {jitter}")
        if first < 0 or floor < 0 or any(delay <= 0 for _, delay in tiers):
            raise ValueError("Schedule delays must be positive")
        if aim <= 0 or stretch < 1:
            raise ValueError("Schedule needs aim > 0 and stretch >= 1")
        self.first = first
        self.tiers = tiers
        self.jitter = jitter
        self.floor = floor
        self.use_server_hint = use_server_hint
        self.progress_aware = progress_aware
        self.aim = aim
        self.stretch = stretch
        self._factor: tuple[float, float, float] | None = None

    @classmethod
    def fixed(cls, seconds: float, *, jitter: float = 0.0) -> Schedule:
        """Poll every ``seconds``, the first poll included; progress is not used."""
        return cls(
            first=seconds,
            tiers=((math.inf, seconds),),
            jitter=jitter,
            floor=0.0,
            progress_aware=False,
        )

    @classmethod
    def backoff(
        cls, initial: float = 2.0, factor: float = 1.5, max: float = 30.0, *, jitter: float = 0.1
    ) -> Schedule:
        """Start at ``initial`` seconds and multiply by ``factor`` after each poll, up to
        ``max``: the docs' alternative client (2 s, 3 s, 4.5 s, ... 30 s)."""
        if initial <= 0 or factor < 1 or max < initial:
            raise ValueError("Schedule.backoff needs 0 < initial <= max and factor >= 1")
        schedule = cls(
            first=initial, tiers=((math.inf, max),), jitter=jitter, floor=0.0, progress_aware=False
        )
        schedule._factor = (initial, factor, max)
        return schedule

    @classmethod
    def fallback(
        cls, first: float = 60.0, every: float = 180.0, *, jitter: float = 0.1
    ) -> Schedule:
        """A safety net for tasks whose completion comes by callback (``callback_url``):
        the first poll of a task just created after ``first`` seconds, then one every
        ``every`` seconds (±``jitter``), progress and server hints ignored.

        The callback normally ends the task long before; these polls only catch a callback
        that never arrived (a lost delivery, the receiver down for longer than the server's
        ~21 minutes of retries), at a small fraction of the default schedule's requests.
        """
        if first < 0 or every <= 0:
            raise ValueError("Schedule.fallback needs first >= 0 and every > 0")
        return cls(
            first=first,
            tiers=((math.inf, every),),
            jitter=jitter,
            floor=min(1.0, every),
            # A poll-after hint is sized for eager polling (seconds): following it would
            # undo the point of polling slowly.
            use_server_hint=False,
            progress_aware=False,
        )

    def base_delay(self, age: float, polls: int) -> float:
        """The delay before the next poll from the tiers alone (no jitter, hint or estimate).

        Args:
            age: Seconds since the task was created (or first seen).
            polls: How many polls were made so far.
        """
        if self._factor is not None:
            initial, factor, ceiling = self._factor
            return min(ceiling, initial * factor**polls)
        for below, delay in self.tiers:
            if age < below:
                return delay
        return self.tiers[-1][1]  # pragma: no cover - the last tier is inf

    def next_delay(
        self,
        age: float,
        polls: int,
        hint: float | None = None,
        rand: Callable[[], float] = random.random,
        eta: float | None = None,
    ) -> float:
        """The delay before the next poll.

        Args:
            age: Seconds since the task was created (or first seen).
            polls: How many polls were made so far.
            hint: The server's poll-after hint in seconds, if the last response had one.
            rand: The random source for jitter (tests pass a constant).
            eta: Estimated seconds until the task finishes, if known (see :func:`plan_delay`).
        """
        if hint is not None and self.use_server_hint:
            return max(self.floor, hint)
        delay = self.base_delay(age, polls)
        if eta is not None and self.progress_aware:
            if eta <= 0:
                return self.floor  # progress says it is done: the status should follow
            target = eta * self.aim
            if target < delay * self.stretch:
                # No jitter here: every task's estimate differs already, and jitter on a
                # long estimate would only make the finish seen later.
                return max(self.floor, target)
            delay *= self.stretch
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return max(self.floor, delay)

    def __repr__(self) -> str:
        if self._factor is not None:
            initial, factor, ceiling = self._factor
            return f"Schedule.backoff({initial:g}, {factor:g}, {ceiling:g})"
        return f"Schedule(first={self.first:g}, tiers={self.tiers!r}, jitter={self.jitter:g})"
