"""Polling: when to poll (:class:`Schedule`), and one scheduler for any number of tasks
(:class:`Poller`), behind ``wait()``, ``client.watch()`` and ``client.poller()``.

The poller keeps one min-heap of next-poll times and ``concurrency`` worker coroutines.
Exactly one worker at a time (the leader, holding ``_take_lock``) sleeps until the top of
the heap is due; the others queue on the lock. So 100,000 tracked tasks cost 100,000 small
records and one heap, not 100,000 sleeping coroutines, and never more than ``concurrency``
requests are in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    TaskFailedError,
    WaitTimeoutError,
    wrong_task_error,
)
from ._models import GenerationTask, Status, Video, check_id
from ._retry import backoff_delay

if TYPE_CHECKING:
    from ._client import Client

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "LOOP_CLOCK",
    "Clock",
    "Kind",
    "Outcome",
    "Poller",
    "PollerStats",
    "Schedule",
    "Watch",
    "estimate_eta",
    "plan_delay",
]

log = logging.getLogger("aio88")

#: How long a task is waited for unless told otherwise: 30 minutes.
DEFAULT_WAIT_TIMEOUT = 30 * 60.0

#: The 88API docs' polling tiers: (task age below which, delay between polls).
DOCS_TIERS: tuple[tuple[float, float], ...] = ((30.0, 5.0), (120.0, 10.0), (math.inf, 30.0))

#: Which API family a task belongs to: ``/v1/video/generations`` or ``/v1/videos``.
Kind = Literal["generation", "video"]
Task: TypeAlias = GenerationTask | Video
Fetch: TypeAlias = Callable[[str], Awaitable[tuple[Task, float | None]]]

_FATAL = (AuthenticationError, PermissionDeniedError)
#: Polls a worker makes in a row before it yields to the event loop regardless.
_FAIRNESS_STREAK = 32
_TRANSIENT = (APIConnectionError, APIStatusError, APIResponseValidationError)


# -- when to poll ------------------------------------------------------------------------


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


class _ProgressState(Protocol):
    started: float
    polls: int
    anchor_t: float
    anchor_p: int


def plan_delay(
    schedule: Schedule,
    state: _ProgressState,
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

    Use :meth:`fixed` for a constant interval and :meth:`backoff` for geometric growth.
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


# -- time ------------------------------------------------------------------------------


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


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one task ended, as ``client.watch`` yields it.

    Attributes:
        id: The task id.
        kind: ``"generation"`` or ``"video"``.
        task: The task as last retrieved (``None`` if it never was).
        error: Why it did not succeed: a :class:`TaskFailedError`, a
            :class:`WaitTimeoutError`, a :class:`NotFoundError`, a download error, a
            ``ValueError`` for an id that cannot be polled... ``None`` on success.
        path: Where the video was saved, when the watch downloads.
    """

    id: str
    kind: Kind
    task: Task | None = None
    error: BaseException | None = None
    path: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether the task succeeded (and, when downloading, its file is saved)."""
        return self.error is None and self.task is not None and self.task.status is Status.SUCCEEDED


@dataclass(frozen=True, slots=True)
class PollerStats:
    """A snapshot of a poller's work.

    Attributes:
        tracked: Tasks being polled now.
        in_flight: Poll requests under way now.
        polls: Poll requests made (retries inside the client not counted).
        finished: Tasks that reached an outcome.
        errors: Polls that failed transiently and were rescheduled.
        rate_limited: 429 answers the client has seen.
        concurrency: The concurrency in force now (lowered after a 429, then regrown).
    """

    tracked: int
    in_flight: int
    polls: int
    finished: int
    errors: int
    rate_limited: int
    concurrency: int


# -- the poller --------------------------------------------------------------------------


class _Waiter:
    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.outcome: Outcome | None = None


class _Tracked:
    """One task's polling state. Kept small: there may be a million of them."""

    __slots__ = (
        "anchor_p",
        "anchor_t",
        "deadline",
        "failures",
        "id",
        "kind",
        "live",
        "polls",
        "started",
        "task",
        "waiters",
        "watched",
    )

    def __init__(self, task_id: str, kind: Kind, started: float, deadline: float) -> None:
        self.id = task_id
        self.kind: Kind = kind
        self.started = started
        self.deadline = deadline
        self.polls = 0
        self.failures = 0
        self.task: Task | None = None
        self.anchor_t = 0.0
        self.anchor_p = -1
        self.live = True
        self.watched = False
        self.waiters: list[_Waiter] | None = None

    @property
    def timeout(self) -> float:
        """The deadline as seconds from the start of tracking."""
        return round(self.deadline - self.started, 9)  # as given, without float residue

    def __lt__(self, other: _Tracked) -> bool:
        # Heap items are (due, entry): entries are compared only when two are due at the
        # very same instant, and then any order will do.
        return False


_INTERNED_FIELDS = ("_status", "model", "object", "size", "seconds", "format", "platform", "action")


def _compact(task: Task) -> Task:
    """Shrink a task the poller keeps: one id string instead of two, and the strings
    that repeat across thousands of tasks (status, model, size) shared."""
    if task._id == task.task_id:
        task._id = task.task_id
    intern = sys.intern
    for name in _INTERNED_FIELDS:
        value = getattr(task, name, None)
        if type(value) is str:
            setattr(task, name, intern(value))
    return task


class Poller:
    """One scheduler polling any number of tasks with at most ``concurrency`` requests in
    flight. Create it with ``client.poller(...)``; it runs inside ``async with``::

        async with client.poller(concurrency=64) as poller:   # e.g. in an app's lifespan
            task = await poller.wait("task_abc", kind="video")  # from any request handler

    Concurrent ``wait()`` calls for one id share one poll stream; a cancelled waiter does
    not disturb the others; tasks can be added at any time. Every poll draws from the
    client's rate budget, and a 429 halves the poller's concurrency, which then grows
    back by one slot per window of successful polls.

    Args:
        client: The client whose requests it makes.
        concurrency: The most poll requests in flight at once.
        schedule: When to poll (the 88API docs' tiers, progress-aware, by default).
        timeout: The default deadline per task, in seconds; ``None`` waits forever.
        on_update: Called with a task whenever its status or progress changes.
        clock: The time source (tests pass ``aio88.testing.ManualClock``).
    """

    def __init__(
        self,
        client: Client,
        *,
        concurrency: int = 64,
        schedule: Schedule | None = None,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_update: Callable[[Task], object] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._client = client
        self._fetchers: dict[str, Fetch] = {
            "generation": client.generations._fetch,
            "video": client.videos._fetch,
        }
        self.concurrency = concurrency
        self.schedule = schedule or Schedule()
        self.timeout = timeout
        self.on_update = on_update
        self._clock: Clock = clock or LOOP_CLOCK
        self._heap: list[tuple[float, _Tracked]] = []
        self._tracked: dict[str, _Tracked] = {}
        # asyncio's lock: anyio's checkpoints and cancel-scope bookkeeping on every acquire
        # cost more than half of a poll's CPU (bench_poll: 143 -> 66 µs). Fairness between
        # workers is kept explicitly instead (see _worker).
        self._take_lock = asyncio.Lock()
        self._sleep_scope: anyio.CancelScope | None = None
        self._sleeping_until = math.inf
        self._tg: TaskGroup | None = None
        self._sink: MemoryObjectSendStream[Outcome] | None = None
        # Where a watched task's outcome goes: the sink, or a download queue first.
        self._route: Callable[[Outcome], None] | None = None
        self._fatal: BaseException | None = None
        # Adaptive concurrency: workers numbered >= _limit stand by.
        self._limit = float(concurrency)
        self._grown = anyio.Event()
        self._polls = 0
        self._finished = 0
        self._errors = 0
        self._in_flight = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Poller:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for index in range(self.concurrency):
            self._tg.start_soon(self._worker, index)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        tg.cancel_scope.cancel()
        # The workers only ever end by this cancellation; whatever the body raised
        # propagates as it is, not wrapped in an ExceptionGroup.
        await tg.__aexit__(None, None, None)
        return None

    # -- tracking ----------------------------------------------------------------------

    def now(self) -> float:
        """The current time on the poller's clock."""
        return self._clock.now()

    def add(
        self,
        task_id: str,
        *,
        kind: Kind = "video",
        timeout: float | Literal["default"] | None = "default",
        fresh: bool = False,
    ) -> None:
        """Start polling ``task_id`` (if not polled already) and report its outcome to the
        watch this poller serves.

        Args:
            task_id: The task id (already validated).
            kind: Which API family it belongs to.
            timeout: Its deadline in seconds from now; the poller's default if omitted.
            fresh: The task was just created: wait ``schedule.first`` before the first poll
                (otherwise the first poll is immediate: it may be done already).
        """
        entry = self._track(task_id, kind, self.timeout if timeout == "default" else timeout, fresh)
        entry.watched = True

    def _track(self, task_id: str, kind: Kind, timeout: float | None, fresh: bool) -> _Tracked:
        entry = self._tracked.get(task_id)
        now = self._clock.now()
        deadline = math.inf if timeout is None else now + timeout
        if entry is not None:
            entry.deadline = max(entry.deadline, deadline)
            return entry
        entry = _Tracked(task_id, kind, now, deadline)
        self._tracked[task_id] = entry
        self._push(entry, now + self.schedule.first if fresh else now)
        return entry

    def _push(self, entry: _Tracked, due: float) -> None:
        if due > entry.deadline:
            due = entry.deadline
        heapq.heappush(self._heap, (due, entry))
        if due < self._sleeping_until and self._sleep_scope is not None:
            self._sleep_scope.cancel()  # the leader sleeps too long now: wake it

    def _drop(self, entry: _Tracked) -> None:
        """Stop polling ``entry`` (its heap item is skipped when popped)."""
        entry.live = False
        if self._tracked.get(entry.id) is entry:
            del self._tracked[entry.id]

    async def wait(
        self,
        task_id: str | Task,
        *,
        kind: Kind | None = None,
        timeout: float | Literal["default"] | None = "default",
    ) -> Task:
        """Wait for a task to finish and return it once it succeeded.

        Concurrent calls for the same id share one poll stream. Cancelling one call (say,
        the HTTP client went away) leaves the others served; when the last one leaves,
        polling stops unless the task is also watched.

        Args:
            task_id: The task id, or the task (whose type gives ``kind``).
            kind: ``"generation"`` or ``"video"``; default: from the task, else ``"video"``.
            timeout: Seconds to wait; the poller's default if omitted; ``None``: forever.

        Raises:
            TaskFailedError: The task failed.
            WaitTimeoutError: ``timeout`` passed first (the task goes on on the server).
            NotFoundError: No such task.
            AuthenticationError: The key was refused.
        """
        resolved_kind = kind or _kind_of(task_id)
        task_id = check_id(task_id)
        if self._tg is None:
            raise RuntimeError("the poller is not running: use `async with client.poller()`")
        limit = self.timeout if timeout == "default" else timeout
        entry = self._track(task_id, resolved_kind, limit, fresh=False)
        waiter = _Waiter()
        if entry.waiters is None:
            entry.waiters = []
        entry.waiters.append(waiter)
        deadline = math.inf if limit is None else self._clock.now() + limit
        try:
            arrived = await self._wait_event(waiter.event, deadline)
        finally:
            if waiter.outcome is None and entry.waiters is not None:
                entry.waiters.remove(waiter)
                if not entry.waiters and not entry.watched and entry.live:
                    self._drop(entry)
        if not arrived or waiter.outcome is None:
            raise WaitTimeoutError(task_id, math.inf if limit is None else limit, entry.task)
        outcome = waiter.outcome
        if outcome.error is not None:
            raise outcome.error
        assert outcome.task is not None
        return outcome.task

    async def _wait_event(self, event: anyio.Event, deadline: float) -> bool:
        """Wait for ``event`` until ``deadline`` on the poller's clock; False on timeout."""
        clock = self._clock
        if deadline == math.inf:
            await event.wait()
        elif clock is LOOP_CLOCK:
            with anyio.move_on_after(deadline - clock.now()):
                await event.wait()
        else:
            async with anyio.create_task_group() as tg:

                async def alarm() -> None:
                    await clock.sleep_until(deadline)
                    tg.cancel_scope.cancel()

                tg.start_soon(alarm)
                await event.wait()
                tg.cancel_scope.cancel()
        return event.is_set()

    def stats(self) -> PollerStats:
        """What the poller is doing and has done."""
        return PollerStats(
            tracked=len(self._tracked),
            in_flight=self._in_flight,
            polls=self._polls,
            finished=self._finished,
            errors=self._errors,
            rate_limited=self._client._transport.rate_limited,
            concurrency=int(self._limit),
        )

    # -- the scheduler -----------------------------------------------------------------

    async def _take(self) -> _Tracked:
        """The next due task to poll; one past its deadline is finished here instead (with
        the time already read). The caller is the only worker sleeping for it."""
        async with self._take_lock:
            heap, clock = self._heap, self._clock
            while True:
                now = clock.now()
                while heap and heap[0][0] <= now:
                    entry = heapq.heappop(heap)[1]
                    if not entry.live:
                        continue
                    if now < entry.deadline:
                        return entry
                    timeout = WaitTimeoutError(entry.id, entry.timeout, entry.task)
                    self._finish(entry, entry.task, timeout)
                due = heap[0][0] if heap else math.inf
                scope = self._sleep_scope = anyio.CancelScope()
                self._sleeping_until = due
                with scope:
                    await clock.sleep_until(due)
                self._sleep_scope = None
                self._sleeping_until = math.inf

    async def _worker(self, index: int) -> None:
        streak = 0
        while True:
            while index >= self._limit:  # stood down after a 429
                await self._grown.wait()
            streak += 1
            if streak >= _FAIRNESS_STREAK:
                # A poll that never yields (an in-memory fetch, a synchronous failure) must
                # not let one worker hold the loop: step aside now and then.
                streak = 0
                await asyncio.sleep(0)
            await self._poll(await self._take())

    async def _poll(self, entry: _Tracked) -> None:
        transport = self._client._transport
        limited_before = transport.rate_limited
        self._in_flight += 1
        self._polls += 1
        entry.polls += 1
        try:
            task, hint = await self._fetchers[entry.kind](entry.id)
        except _FATAL as exc:
            self._on_fatal(exc)
            self._finish(entry, entry.task, exc)
            return
        except NotFoundError as exc:
            self._finish(entry, entry.task, exc)
            return
        except _TRANSIENT as exc:
            self._errors += 1
            entry.failures += 1
            if transport.rate_limited != limited_before:
                self._congested()
            delay = (
                backoff_delay(entry.failures, self._client._transport.retry) + self.schedule.floor
            )
            log.debug("poll %s failed (%s); again in %.1fs", entry.id, exc, delay)
            if entry.live:
                self._push(entry, self._clock.now() + delay)
            return
        finally:
            self._in_flight -= 1

        if not task.answers_for(entry.id):
            # An answer about another task (a cache or proxy mixing answers up) is never
            # taken for this one's.
            self._finish(entry, entry.task, wrong_task_error(entry.id, task.id))
            return
        if transport.rate_limited != limited_before:
            self._congested()
        elif self._limit < self.concurrency:
            self._regrow()
        entry.failures = 0
        previous, entry.task = entry.task, task
        status = task.status
        progress = task.progress
        if previous is None or (
            task.raw_status != previous.raw_status or progress != previous.progress
        ):
            self._updated(task)
        if status is Status.SUCCEEDED:
            self._finish(entry, task, None)
        elif status is Status.FAILED:
            self._finish(entry, task, TaskFailedError(task))
        elif entry.live:
            _compact(task)  # kept until the next poll: worth shrinking (a finished one is not)
            now = self._clock.now()
            self._push(entry, now + plan_delay(self.schedule, entry, now, status, progress, hint))

    def _updated(self, task: Task) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("task %s: %s %s", task.id, task.raw_status, task.progress)
        if self.on_update is not None:
            self.on_update(task)

    def _finish(self, entry: _Tracked, task: Task | None, error: BaseException | None) -> None:
        self._drop(entry)
        self._finished += 1
        outcome = Outcome(entry.id, entry.kind, task, error)
        for waiter in entry.waiters or ():
            waiter.outcome = outcome
            waiter.event.set()
        entry.waiters = None
        if entry.watched and self._sink is not None and self._fatal is None:
            (self._route or self._sink.send_nowait)(outcome)

    # -- congestion ----------------------------------------------------------------------

    def _congested(self) -> None:
        """A 429: halve the concurrency (multiplicative decrease)."""
        self._limit = max(1.0, self._limit / 2)

    def _regrow(self) -> None:
        """A clean poll: one more slot per window of successes (additive increase)."""
        before = int(self._limit)
        self._limit = min(float(self.concurrency), self._limit + 1.0 / self._limit)
        if int(self._limit) > before:
            grown, self._grown = self._grown, anyio.Event()
            grown.set()

    def _on_fatal(self, exc: BaseException) -> None:
        """401/403: every task would fail the same way; end the watch this poller serves."""
        if self._fatal is None:
            self._fatal = exc
            if self._sink is not None:
                self._sink.close()


def _kind_of(task: object) -> Kind:
    return "generation" if isinstance(task, GenerationTask) else "video"


# -- watch -------------------------------------------------------------------------------


#: Not an outcome: wakes a waiting iteration after :meth:`Watch.forget`.
_WAKE = Outcome("", "video")


class Watch:
    """The outcomes of a ``client.watch(...)``, in completion order, each id once::

        async with client.watch(ids, kind="video") as outcomes:
            async for outcome in outcomes:
                ...

    Add more ids while it runs with :meth:`add`; ``pending`` says how many are still out.
    Tasks still being created can be announced with :meth:`expect` (the iteration stays
    open for them) and then added, or dropped with :meth:`forget`.
    """

    def __init__(
        self,
        poller: Poller,
        receive: MemoryObjectReceiveStream[Outcome],
        send: MemoryObjectSendStream[Outcome],
        kind: Kind,
        timeout: float | None,
        deadline: float,
    ) -> None:
        self._poller = poller
        self._receive = receive
        self._send = send
        self._kind: Kind = kind
        self._timeout = timeout
        self._deadline = deadline
        self._seen: set[str] = set()
        self._expected = 0
        self.pending = 0
        """Outcomes still to come: ids added or expected, not yet yielded."""

    def add(
        self, ids: Iterable[str | Task], *, kind: Kind | None = None, fresh: bool = False
    ) -> None:
        """Watch more tasks. Ids already watched are ignored; an id that cannot be polled
        becomes an :class:`Outcome` with a ``ValueError``.

        Args:
            ids: Task ids, or tasks (a task's type gives its kind).
            kind: The kind of plain string ids; the watch's own by default.
            fresh: The tasks were just created: first poll after ``schedule.first``.
        """
        poller = self._poller
        # One clock read for the whole batch: adding 100,000 ids is part of their cost.
        timeout = self._timeout
        remaining = self._deadline - poller.now()
        if remaining < (math.inf if timeout is None else timeout):
            timeout = max(0.0, remaining)
        seen = self._seen
        for item in ids:
            task_kind = kind or (_kind_of(item) if not isinstance(item, str) else self._kind)
            try:
                task_id = check_id(item)
            except (TypeError, ValueError) as exc:
                self._count_one()
                self._send.send_nowait(
                    Outcome(str(getattr(item, "id", item)), task_kind, None, exc)
                )
                continue
            if task_id in seen:
                continue
            seen.add(task_id)
            self._count_one()
            poller.add(task_id, kind=task_kind, timeout=timeout, fresh=fresh)

    def _count_one(self) -> None:
        # An expected task arriving takes its place; any other adds to what is pending.
        if self._expected:
            self._expected -= 1
        else:
            self.pending += 1

    def expect(self, count: int) -> None:
        """Keep the iteration open for ``count`` tasks not added yet (still being created).
        :meth:`add` each one when it exists, or :meth:`forget` it if it never will."""
        self._expected += count
        self.pending += count

    def forget(self, count: int = 1) -> None:
        """``count`` expected tasks will not come after all (their create failed)."""
        self._expected -= count
        self.pending -= count
        self._send.send_nowait(_WAKE)  # an iteration waiting for them must see the change

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self

    async def __anext__(self) -> Outcome:
        while True:
            if self.pending <= 0:
                raise StopAsyncIteration
            try:
                # Outcomes already waiting are taken without a trip through the loop.
                outcome = self._receive.receive_nowait()
            except anyio.WouldBlock:
                outcome = await self._next_outcome()
            except anyio.EndOfStream:
                raise self._fatal() from None
            if outcome is not _WAKE:
                self.pending -= 1
                return outcome

    async def _next_outcome(self) -> Outcome:
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            raise self._fatal() from None

    def _fatal(self) -> BaseException:
        """The error that closed the stream (a refused key)."""
        fatal = self._poller._fatal
        assert fatal is not None
        return fatal

    def stats(self) -> PollerStats:
        """The underlying poller's statistics."""
        return self._poller.stats()
