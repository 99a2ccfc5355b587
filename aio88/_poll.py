"""When to poll, and waiting for one task.

:class:`Schedule` decides the delay before each poll. :func:`wait_for_task` is the simple
single-task loop behind ``generations.wait`` and ``videos.wait``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import anyio

from ._errors import TaskFailedError, WaitTimeoutError
from ._models import Status

__all__ = ["DEFAULT_WAIT_TIMEOUT", "Schedule", "wait_for_task"]

#: How long ``wait()`` waits for a task unless told otherwise: 30 minutes.
DEFAULT_WAIT_TIMEOUT = 30 * 60.0

#: The 88API docs' polling tiers: (task age below which, delay between polls).
DOCS_TIERS: tuple[tuple[float, float], ...] = ((30.0, 5.0), (120.0, 10.0), (math.inf, 30.0))


class Schedule:
    """When to poll a task: the delay before the first poll and between polls.

    The default follows the 88API docs: first poll after about 2 s, then every 5 s until
    the task is 30 s old, every 10 s until 2 min, every 30 s after. Each delay is spread
    by ±10 % jitter so that thousands of tasks never poll in lock-step, and a server hint
    (``openai-poll-after-ms``, or ``Retry-After`` on a 200) is honoured whenever a
    response carries one.

    Args:
        first: Seconds before the first poll of a task just created.
        tiers: ``(age_below, delay)`` pairs in increasing age; the last must cover ``inf``.
        jitter: The relative spread of each delay (0.1 = ±10 %).
        floor: The shortest delay ever used, whatever a hint or estimate says.
        use_server_hint: Whether to follow the server's poll-after hints.

    Use :meth:`fixed` for a constant interval and :meth:`backoff` for geometric growth.
    """

    __slots__ = ("_factor", "first", "floor", "jitter", "tiers", "use_server_hint")

    def __init__(
        self,
        *,
        first: float = 2.0,
        tiers: tuple[tuple[float, float], ...] = DOCS_TIERS,
        jitter: float = 0.1,
        floor: float = 1.0,
        use_server_hint: bool = True,
    ) -> None:
        if not tiers or tiers[-1][0] != math.inf:
            raise ValueError("Schedule tiers must end with an (inf, delay) tier")
        if not 0 <= jitter < 1:
            raise ValueError(f"Schedule jitter must be in [0, 1), got {jitter}")
        if first < 0 or floor < 0 or any(delay <= 0 for _, delay in tiers):
            raise ValueError("Schedule delays must be positive")
        self.first = first
        self.tiers = tiers
        self.jitter = jitter
        self.floor = floor
        self.use_server_hint = use_server_hint
        self._factor: tuple[float, float, float] | None = None

    @classmethod
    def fixed(cls, seconds: float, *, jitter: float = 0.0) -> Schedule:
        """Poll every ``seconds``, the first poll included."""
        return cls(first=seconds, tiers=((math.inf, seconds),), jitter=jitter, floor=0.0)

    @classmethod
    def backoff(
        cls, initial: float = 2.0, factor: float = 1.5, max: float = 30.0, *, jitter: float = 0.1
    ) -> Schedule:
        """Start at ``initial`` seconds and multiply by ``factor`` after each poll, up to
        ``max``: the docs' alternative client (2 s, 3 s, 4.5 s, ... 30 s)."""
        if initial <= 0 or factor < 1 or max < initial:
            raise ValueError("Schedule.backoff needs 0 < initial <= max and factor >= 1")
        schedule = cls(first=initial, tiers=((math.inf, max),), jitter=jitter, floor=0.0)
        schedule._factor = (initial, factor, max)
        return schedule

    def base_delay(self, age: float, polls: int) -> float:
        """The delay before the next poll, before jitter and hints.

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
    ) -> float:
        """The jittered delay before the next poll, honouring a server hint if given."""
        if hint is not None and self.use_server_hint:
            return max(self.floor, hint)
        delay = self.base_delay(age, polls)
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return max(self.floor, delay)

    def __repr__(self) -> str:
        if self._factor is not None:
            initial, factor, ceiling = self._factor
            return f"Schedule.backoff({initial:g}, {factor:g}, {ceiling:g})"
        return f"Schedule(first={self.first:g}, tiers={self.tiers!r}, jitter={self.jitter:g})"


class _Task(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def status(self) -> Status: ...
    @property
    def raw_status(self) -> str: ...
    @property
    def progress(self) -> int | None: ...


T = TypeVar("T", bound=_Task)


async def wait_for_task(
    fetch: Callable[[str], Awaitable[tuple[T, float | None]]],
    task_id: str,
    *,
    timeout: float | None,
    schedule: Schedule,
    on_update: Callable[[T], object] | None = None,
) -> T:
    """Poll ``task_id`` until it is terminal; return it when it succeeded.

    ``fetch`` returns the task and the server's poll-after hint in seconds, if any.
    The first poll is immediate (the task may already be done).

    Raises:
        TaskFailedError: The task failed.
        WaitTimeoutError: ``timeout`` seconds passed first (``None`` waits forever).
    """
    last: T | None = None
    started = anyio.current_time()
    polls = 0
    with anyio.move_on_after(timeout) as scope:
        while True:
            task, hint = await fetch(task_id)
            polls += 1
            if on_update is not None and (
                last is None or task.raw_status != last.raw_status or task.progress != last.progress
            ):
                on_update(task)
            last = task
            status = task.status
            if status is Status.SUCCEEDED:
                return task
            if status is Status.FAILED:
                raise TaskFailedError(task)
            age = anyio.current_time() - started
            await anyio.sleep(schedule.next_delay(age, polls, hint))
    assert scope.cancelled_caught
    raise WaitTimeoutError(task_id, timeout if timeout is not None else math.inf, last)
