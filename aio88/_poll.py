"""One scheduler for any number of tasks (:class:`Poller`), behind ``wait()``,
``client.watch()`` and ``client.poller()``.

The poller keeps one min-heap of next-poll times and ``concurrency`` worker coroutines.
Exactly one worker at a time (the leader, holding ``_take_lock``) sleeps until the top of
the heap is due; the others queue on the lock. So 100,000 tracked tasks cost 100,000 small
records and one heap, not 100,000 sleeping coroutines, and never more than ``concurrency``
requests are in flight. It takes a :class:`~aio88._http.Transport`, never the client.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Literal, overload

import anyio
import msgspec
from anyio.abc import TaskGroup

from ._body import read_limited
from ._clock import LOOP_CLOCK, Clock
from ._config import (
    CALLBACK_BODY_LIMIT,
    CALLBACK_MEMORY,
    CALLBACK_MEMORY_MAX,
    CONGESTION_RECOVERY,
    DEFAULT_POLL_CONCURRENCY,
    DEFAULT_WAIT_TIMEOUT,
    LEASE_CHECKS,
    POLL_CONCURRENCY_FLOOR,
    POLL_FAIRNESS_STREAK,
    check_timeout,
)
from ._congestion import Congestion
from ._coordination import TaskLeases
from ._errors import (
    Aio88Error,
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    TaskFailedError,
    WaitTimeoutError,
    WebhookVerificationError,
    wrong_task_error,
)
from ._fetch import DECODERS, fetch_task
from ._http import Transport
from ._models import (
    GenerationTask,
    Kind,
    ResponseShapeError,
    Status,
    Task,
    Video,
    check_id,
    compact,
)
from ._outcome import Outcome, PollerStats
from ._retry import backoff_delay
from ._schedule import Schedule, plan_delay
from ._webhooks import CallbackEvent, Webhooks

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiohttp import web

__all__ = ["Fetch", "Poller", "kind_of"]

log = logging.getLogger("aio88")

#: One poll: ``await fetch(kind, task_id)`` -> (the task, the server's poll-after hint).
Fetch = Callable[[Kind, str], Awaitable[tuple[Task, float | None]]]

_FATAL = (AuthenticationError, PermissionDeniedError)
_TRANSIENT = (APIConnectionError, APIStatusError, APIResponseValidationError)


class _Waiter:
    __slots__ = ("event", "looking", "outcome")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.outcome: Outcome | None = None
        #: A ``timeout=0`` wait: it takes the next answer of the server, whatever it is.
        self.looking = False


class _Tracked:
    """One task's polling state. Kept small: there may be a million of them."""

    __slots__ = (
        "anchor_p",
        "anchor_t",
        "deadline",
        "due",
        "failures",
        "id",
        "kind",
        "live",
        "polls",
        "started",
        "task",
        "unleased",
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
        #: When its one live heap item is due: an item with another time is stale (a
        #: callback moved the poll earlier) and is skipped. While a poll of it is in flight
        #: this is the popped item's time, in the past.
        self.due = math.inf
        self.task: Task | None = None
        self.anchor_t = 0.0
        self.anchor_p = -1
        self.live = True
        self.watched = False
        self.waiters: list[_Waiter] | None = None
        #: Polled without a fleet's lease: the fleet recorded its end in a form this
        #: process cannot read, so it asks the API itself.
        self.unleased = False

    @property
    def timeout(self) -> float:
        """The deadline as seconds from the start of tracking."""
        return round(self.deadline - self.started, 9)  # as given, without float residue

    def __lt__(self, other: _Tracked) -> bool:
        # Heap items are (due, entry): entries are compared only when two are due at the
        # very same instant, and then any order will do.
        return False


class Poller:
    """One scheduler polling any number of tasks with at most ``concurrency`` requests in
    flight. Create it with ``client.poller(...)``; it runs inside ``async with``::

        async with client.poller(concurrency=64) as poller:   # e.g. in an app's lifespan
            task = await poller.wait("task_abc", kind="video")  # from any request handler

    Concurrent ``wait()`` calls for one id share one poll stream; a cancelled waiter does
    not disturb the others; tasks can be added at any time. Every poll draws from the
    client's rate budget; every 429 pauses the whole client (for its ``Retry-After``, or
    a backoff), and one without ``Retry-After`` also halves the poller's concurrency (once
    per round trip, never below a quarter), which grows back with successful polls and
    with time (see :mod:`aio88._congestion`).

    Args:
        transport: What sends its requests (the client's).
        concurrency: The most poll requests in flight at once.
        schedule: When to poll (the 88API docs' tiers, progress-aware, by default).
        timeout: The default deadline per task, in seconds; ``None`` waits forever.
        on_update: Called with a task whenever its status or progress changes.
        clock: The time source (tests pass ``aio88.testing.ManualClock``).
        on_outcome: Called with the outcome of each task added with :meth:`add` (a watch's
            tasks); waiters of :meth:`wait` get theirs directly.
        on_fatal: Called once, with the error, when the key is refused (401, 403): every
            task would fail the same way, so no further outcome is reported.
        fetch: What one poll does: ``await fetch(kind, task_id)`` returns the task and the
            server's poll-after hint. A GET through ``transport`` by default; benchmarks
            and tests put an in-memory one here to time the scheduler alone.
        webhooks: What verifies callbacks for :meth:`webhook_handler` (the client's).
        leases: Share the polling with other processes (``Client(fleet=...)``): a task
            is polled only while this process holds its lease; the others' waiters hear
            of its end from the fleet, and this one's of the tasks they poll.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        concurrency: int = DEFAULT_POLL_CONCURRENCY,
        schedule: Schedule | None = None,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_update: Callable[[Task], object] | None = None,
        clock: Clock | None = None,
        on_outcome: Callable[[Outcome], object] | None = None,
        on_fatal: Callable[[BaseException], object] | None = None,
        fetch: Fetch | None = None,
        webhooks: Webhooks | None = None,
        leases: TaskLeases | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        check_timeout(timeout)
        self._transport = transport
        self._fetch: Fetch = fetch or functools.partial(fetch_task, transport)
        self._on_outcome = on_outcome
        self._on_fatal_callback = on_fatal
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
        self._fatal: BaseException | None = None
        # Adaptive concurrency: workers numbered >= the congestion's amount stand by.
        self._congestion = Congestion(
            concurrency,
            floor=max(1.0, concurrency * POLL_CONCURRENCY_FLOOR),
            recovery=CONGESTION_RECOVERY,
            now=0.0,  # only read once a 429 has lowered it, with the clock's time then
        )
        self._standing_by: set[anyio.CancelScope] = set()
        self._signals_seen = transport.congestion_signals
        self._polls = 0
        self._finished = 0
        self._errors = 0
        self._in_flight = 0
        self._webhooks = webhooks
        # Callbacks for tasks not tracked yet: id -> when forgotten, oldest first.
        self._hinted: OrderedDict[str, float] = OrderedDict()
        self._leases = leases
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Poller:
        self._transport.open()  # on first use; a closed client refuses here, clearly
        if self._leases is not None:
            self._unsubscribe = self._leases.subscribe(self._ended_elsewhere, self._deliver)
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
        if self._leases is not None:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            for task_id in self._tracked:  # let other processes poll what we leave
                self._leases.untrack(task_id)
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
        limit = self.timeout if timeout == "default" else check_timeout(timeout)
        entry = self._track(task_id, kind, limit, fresh)
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
        if self._leases is not None:
            self._leases.track(task_id, kind)
        if fresh and self._hinted and self._hinted.pop(task_id, -math.inf) > now:
            fresh = False  # its callback came already: it is done, one poll tells how
        self._push(entry, now + self.schedule.first if fresh else now)
        return entry

    def _push(self, entry: _Tracked, due: float) -> None:
        if due > entry.deadline:
            due = entry.deadline
        entry.due = due
        heapq.heappush(self._heap, (due, entry))
        if due < self._sleeping_until and self._sleep_scope is not None:
            self._sleep_scope.cancel()  # the leader sleeps too long now: wake it

    def _drop(self, entry: _Tracked) -> None:
        """Stop polling ``entry`` (its heap item is skipped when popped)."""
        entry.live = False
        if self._tracked.get(entry.id) is entry:
            del self._tracked[entry.id]
            if self._leases is not None:
                self._leases.untrack(entry.id)

    # -- callbacks ---------------------------------------------------------------------

    async def deliver(self, event: CallbackEvent) -> None:
        """Act on a verified callback (``client.webhooks.unwrap(...)``): its task is polled
        now, so every waiter gets the full, typed task from the API.

        The event is a hint, not the truth, and costs at most one poll: a duplicate, or an
        event for a task whose poll is due now or in flight, costs nothing more. An event
        for a task nobody waits on yet costs no request (it does not say which endpoint the
        task lives on); it is remembered for 30 minutes, so a later :meth:`add` of it polls
        at once instead of after ``schedule.first`` (:meth:`wait` always polls at once).

        In a fleet, the event reaches every process: the one polling the task polls it.
        """
        self._called_back(event.task_id)

    def _called_back(self, task_id: str) -> None:
        self._deliver(task_id)
        if self._leases is not None:
            self._leases.hint(task_id)  # the task's poller may be another process

    def _deliver(self, task_id: str) -> None:
        now = self._clock.now()
        entry = self._tracked.get(task_id)
        if entry is None:
            self._remember(task_id, now)
        elif entry.due > now:
            # Moved, not added: the item pushed now becomes the entry's one live item, the
            # old one is skipped when popped (see _take): still one poll stream.
            self._push(entry, now)
        # else a poll is due now or in flight: it sees the task as the server has it.

    def _remember(self, task_id: str, now: float) -> None:
        hinted = self._hinted
        hinted[task_id] = now + CALLBACK_MEMORY
        hinted.move_to_end(task_id)  # kept in expiry order: the oldest go first
        # An OrderedDict pops its front in O(1) (a dict's front would rescan freed slots).
        while len(hinted) > CALLBACK_MEMORY_MAX or next(iter(hinted.values())) <= now:
            hinted.popitem(last=False)

    def webhook_handler(
        self, *, keys: Iterable[str] | None = None, tolerance: float | None = 300
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """An ``aiohttp.web`` handler for the tasks' ``callback_url``::

            app.router.add_post("/88api/callback", poller.webhook_handler())

        It reads at most 64 KiB (413 beyond, with or without ``Content-Length``), verifies
        the signature with the client's key (or ``keys``) and the timestamp within
        ``tolerance`` seconds (401 if either fails; 400 for a signed request that is not
        an event), then passes the event to :meth:`deliver` and answers 204 at once: the poll it
        causes runs on the poller's workers, never inside the request.

        Raises:
            RuntimeError: The poller was made without the client's webhooks (not by
                ``client.poller()``).
        """
        from aiohttp import web  # only web backends pay for aiohttp.web

        webhooks = self._webhooks
        if webhooks is None:
            raise RuntimeError("webhook_handler needs a poller made by client.poller()")
        key_list = None if keys is None else list(keys)

        async def handle(request: web.Request) -> web.Response:
            length = request.content_length
            if length is not None and length > CALLBACK_BODY_LIMIT:
                return web.Response(status=413)
            # One byte past the limit, read from the stream: a chunked body has no
            # Content-Length, and request.read() would buffer up to client_max_size (1 MiB).
            body = await read_limited(request.content, CALLBACK_BODY_LIMIT + 1, None)
            if len(body) > CALLBACK_BODY_LIMIT:
                return web.Response(status=413)
            try:
                event = webhooks.unwrap(body, request.headers, keys=key_list, tolerance=tolerance)
            except WebhookVerificationError as exc:
                log.debug("callback refused: %s", exc)
                return web.Response(status=400 if exc.malformed else 401)
            self._called_back(event.task_id)  # bookkeeping only: the poll runs on a worker
            return web.Response(status=204)

        return handle

    @overload
    async def wait(
        self,
        task_id: Video,
        *,
        kind: Literal["video"] | None = None,
        timeout: float | Literal["default"] | None = "default",
    ) -> Video: ...
    @overload
    async def wait(
        self,
        task_id: GenerationTask,
        *,
        kind: Literal["generation"] | None = None,
        timeout: float | Literal["default"] | None = "default",
    ) -> GenerationTask: ...
    @overload
    async def wait(
        self,
        task_id: str,
        *,
        kind: Literal["generation"],
        timeout: float | Literal["default"] | None = "default",
    ) -> GenerationTask: ...
    @overload
    async def wait(
        self,
        task_id: str,
        *,
        kind: Literal["video"] | None = None,
        timeout: float | Literal["default"] | None = "default",
    ) -> Video: ...
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

        A task object that has not finished (a create's answer, say) was just seen by the
        server: its first poll waits for the schedule (``schedule.first``: a minute with
        :meth:`Schedule.fallback`, where its callback normally ends it with one poll),
        unless its callback came already. A plain id is polled at once.

        Args:
            task_id: The task id, or the task (whose type gives ``kind``).
            kind: ``"generation"`` or ``"video"``; default: from the task, else ``"video"``.
            timeout: Seconds to wait; the poller's default if omitted; ``None``: forever.
                ``0`` polls once (or, for an id already polled for another caller, takes
                its latest answer, or its next one if none has come yet) and returns the
                task if it has succeeded.

        Raises:
            TaskFailedError: The task failed.
            WaitTimeoutError: ``timeout`` passed first (the task goes on on the server).
            ValueError: ``timeout`` is negative.
            NotFoundError: No such task.
            AuthenticationError: The key was refused.
        """
        resolved_kind = kind or kind_of(task_id)
        fresh = not isinstance(task_id, str) and not task_id.status.done
        task_id = check_id(task_id)
        if self._tg is None:
            raise RuntimeError("the poller is not running: use `async with client.poller()`")
        limit = self.timeout if timeout == "default" else check_timeout(timeout)
        entry = self._track(task_id, resolved_kind, limit, fresh=fresh)
        waiter = _Waiter()
        if entry.waiters is None:
            entry.waiters = []
        entry.waiters.append(waiter)
        deadline = math.inf if limit is None else self._clock.now() + limit
        try:
            if limit == 0 and entry.task is None:
                # Nothing seen yet: the next answer decides (the scheduler lets a first
                # poll pass its deadline), success or not.
                waiter.looking = True
                await waiter.event.wait()
                arrived = True
            else:
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
            rate_limited=self._transport.rate_limited,
            concurrency=int(self._congestion.current(self._clock.now())),
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
                    due, entry = heapq.heappop(heap)
                    if due != entry.due or not entry.live:
                        continue  # a stale item (moved by a callback), or a dropped task
                    # A deadline never stops the first poll: timeout=0 polls once.
                    if now < entry.deadline or not entry.polls:
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
        congestion, clock = self._congestion, self._clock
        while True:
            if congestion.lowered and index >= congestion.current(clock.now()):
                await self._stand_by(index)  # stood down after a 429
            streak += 1
            if streak >= POLL_FAIRNESS_STREAK:
                # A poll that never yields (an in-memory fetch, a synchronous failure) must
                # not let one worker hold the loop: step aside now and then.
                streak = 0
                await asyncio.sleep(0)
            await self._poll(await self._take())

    async def _stand_by(self, index: int) -> None:
        """Wait until worker ``index`` has a slot again: time gives it back (see
        :mod:`._congestion`), or successes sooner (they wake the waiting workers)."""
        clock, congestion = self._clock, self._congestion
        while index >= congestion.current(now := clock.now()):
            scope = anyio.CancelScope()
            self._standing_by.add(scope)
            try:
                with scope:
                    # A slot `index` is in use once the amount is above it.
                    await clock.sleep_until(now + congestion.time_until(index + 1e-9, now))
            finally:
                self._standing_by.discard(scope)

    async def _poll(self, entry: _Tracked) -> None:
        leases = self._leases
        if leases is not None and not entry.unleased and not leases.holds(entry.id):
            try:
                held = await leases.claim(entry.id, entry.kind)
            except Aio88Error as exc:  # the fleet was closed under this poller: say so
                self._finish(entry, entry.task, exc)
                return
            if not held:
                # Another live process polls it and will tell us its end; try again in a
                # while, in case that process dies (its lease then runs out).
                if entry.live:
                    self._push(entry, self._clock.now() + leases.lease / LEASE_CHECKS)
                return
        transport = self._transport
        limited_before = transport.rate_limited
        self._in_flight += 1
        self._polls += 1
        entry.polls += 1
        try:
            task, hint = await self._fetch(entry.kind, entry.id)
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
            if transport.congestion_signals != self._signals_seen:
                self._congested()
            delay = backoff_delay(entry.failures, transport.retry) + self.schedule.floor
            log.debug("poll %s failed (%s); again in %.1fs", entry.id, exc, delay)
            if entry.live:
                self._push(entry, self._clock.now() + delay)
            if entry.waiters:
                self._answer_lookers(entry)
            return
        finally:
            self._in_flight -= 1

        if not task.answers_for(entry.id):
            # An answer about another task (a cache or proxy mixing answers up) is never
            # taken for this one's.
            self._finish(entry, entry.task, wrong_task_error(entry.id, task.id))
            return
        if transport.congestion_signals != self._signals_seen:  # a 429, then a retry's success
            self._congested()
        elif self._congestion.lowered and transport.rate_limited == limited_before:
            self._regrow()  # only after a 429 lowered it: the clean path costs one test
        entry.failures = 0
        previous, entry.task = entry.task, task
        status = task.status
        progress = task.progress
        if previous is None or (
            task.raw_status != previous.raw_status or progress != previous.progress
        ):
            self._updated(task)
        if status is Status.SUCCEEDED or status is Status.FAILED:
            if leases is not None:
                leases.finished(entry.id, entry.kind, msgspec.json.encode(task))
            error = None if status is Status.SUCCEEDED else TaskFailedError(task)
            self._finish(entry, task, error)
        elif entry.live:
            compact(task)  # kept until the next poll: worth shrinking (a finished one is not)
            now = self._clock.now()
            self._push(entry, now + plan_delay(self.schedule, entry, now, status, progress, hint))
            if entry.waiters:
                self._answer_lookers(entry)

    def _ended_elsewhere(self, task_id: str, kind: Kind, task_json: bytes) -> None:
        """Another process of the fleet saw ``task_id`` end: finish it here with the task
        it saw (no request of our own)."""
        entry = self._tracked.get(task_id)
        if entry is None:
            return
        try:
            task = DECODERS[kind](task_json)
        except (msgspec.DecodeError, ResponseShapeError):
            # Another version of aio88 wrote it, say. The fleet holds it as ended, so no
            # lease will be had for it: ask the API directly, once, now.
            log.warning("the fleet's record of task %s is unreadable; polling it", task_id)
            entry.unleased = True
            self._deliver(task_id)
            return
        status = task.status
        if status is Status.SUCCEEDED or status is Status.FAILED:
            self._updated(task)
            self._finish(entry, task, None if status is Status.SUCCEEDED else TaskFailedError(task))

    def _updated(self, task: Task) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("task %s: %s %s", task.id, task.raw_status, task.progress)
        if self.on_update is not None:
            self.on_update(task)

    def _answer_lookers(self, entry: _Tracked) -> None:
        """A poll of ``entry`` ended without an outcome: its ``timeout=0`` waiters have
        had their look, and time out with what it saw (the others wait on)."""
        waiters = entry.waiters
        assert waiters is not None
        lookers = [waiter for waiter in waiters if waiter.looking]
        for waiter in lookers:
            waiters.remove(waiter)
            timeout = WaitTimeoutError(entry.id, 0.0, entry.task)
            waiter.outcome = Outcome(entry.id, entry.kind, entry.task, timeout)
            waiter.event.set()
        if lookers and not waiters and not entry.watched and entry.live:
            self._drop(entry)

    def _finish(self, entry: _Tracked, task: Task | None, error: BaseException | None) -> None:
        if not entry.live:
            # Finished (or dropped) while a poll of it was in flight: another process of
            # the fleet wrote its end meanwhile. One outcome per task, the first.
            return
        self._drop(entry)
        self._finished += 1
        outcome = Outcome(entry.id, entry.kind, task, error)
        for waiter in entry.waiters or ():
            waiter.outcome = outcome
            waiter.event.set()
        entry.waiters = None
        if entry.watched and self._on_outcome is not None and self._fatal is None:
            self._on_outcome(outcome)

    # -- congestion ----------------------------------------------------------------------

    def _congested(self) -> None:
        """New congestion signals (429s without ``Retry-After``, one per window, as the
        transport judged them): halve the concurrency once for each. (A 429 with one is
        answered by the transport's pause for every request; lowering the concurrency too
        only slowed batches, measured in ``benchmarks/bench_congestion.py``.)"""
        signals = self._transport.congestion_signals
        now = self._clock.now()
        for _ in range(signals - self._signals_seen):
            self._congestion.signal(now, now)
        self._signals_seen = signals

    def _regrow(self) -> None:
        """A clean poll while lowered: one more slot per window of successes (additive
        increase)."""
        congestion = self._congestion
        now = self._clock.now()
        before = int(congestion.current(now))
        congestion.success(now)
        if self._standing_by and int(congestion.current(now)) > before:
            for scope in self._standing_by:  # they look again at the amount
                scope.cancel()

    def _on_fatal(self, exc: BaseException) -> None:
        """401/403: every task would fail the same way; end the watch this poller serves."""
        if self._fatal is None:
            self._fatal = exc
            if self._on_fatal_callback is not None:
                self._on_fatal_callback(exc)


def kind_of(task: object) -> Kind:
    """The kind of a task object (a plain id counts as a video's)."""
    return "generation" if isinstance(task, GenerationTask) else "video"
