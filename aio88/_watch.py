"""``client.watch()``: the outcomes of many tasks in completion order (:class:`Watch`),
and their videos downloaded on the way (:class:`DownloadQueue`).

:func:`open_watch` assembles the two around a :class:`~aio88._poll.Poller`; it is given
the download to run as a callable, and knows nothing of the client.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._download import file_name_for
from ._errors import APIConnectionError, APIStatusError, DownloadError
from ._models import Kind, Task, check_id
from ._outcome import Outcome, PollerStats
from ._poll import Poller, kind_of
from ._webhooks import CallbackEvent

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["DownloadQueue", "Watch", "open_watch"]

#: What fails one task's download without ending the watch.
_BULK_ERRORS = (ValueError, TypeError, DownloadError, APIConnectionError, APIStatusError)


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
        fatal: list[BaseException],
    ) -> None:
        self._poller = poller
        self._fatal_box = fatal  # the refusal that ended the stream, once there is one
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
            task_kind = kind or (kind_of(item) if not isinstance(item, str) else self._kind)
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
        _deliver(self._send, _WAKE)  # an iteration waiting for them must see the change

    async def deliver(self, event: CallbackEvent) -> None:
        """Act on a verified callback (``client.webhooks.unwrap(...)``): a watched task is
        polled now, once, and its outcome comes as any other (a duplicate or late event
        yields nothing more: each id comes out once). See :meth:`Poller.deliver`."""
        await self._poller.deliver(event)

    def webhook_handler(
        self, *, keys: Iterable[str] | None = None, tolerance: float | None = 300
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """An ``aiohttp.web`` handler for the watched tasks' ``callback_url``: it verifies
        and delivers each callback as :meth:`Poller.webhook_handler` does (413, 401, 400,
        else 204 at once)."""
        return self._poller.webhook_handler(keys=keys, tolerance=tolerance)

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
        return self._fatal_box[0]

    def stats(self) -> PollerStats:
        """The underlying poller's statistics."""
        return self._poller.stats()


class DownloadQueue:
    """Downloads the succeeded tasks of a watch, soonest-expiring first, a few at a time,
    and hands on each :class:`Outcome` with its ``path`` (or the download's error)."""

    def __init__(
        self,
        download: Callable[[Task, Path], Awaitable[Path]],
        directory: Path,
        deliver: Callable[[Outcome], object],
        concurrency: int,
    ) -> None:
        self._download = download
        self._directory = directory
        self._deliver = deliver
        self._concurrency = concurrency
        self._heap: list[tuple[float, int, Outcome]] = []
        self._count = 0
        self._ready = anyio.Event()

    def route(self, outcome: Outcome) -> None:
        """Take a poll outcome: successes queue for download, the rest pass straight on."""
        if not outcome.ok or outcome.task is None:
            self._deliver(outcome)
            return
        expires = outcome.task.expires_at
        self._count += 1
        heapq.heappush(self._heap, (math.inf if expires is None else expires, self._count, outcome))
        self._ready.set()

    async def run(self) -> None:
        """Run the download workers until cancelled."""
        async with anyio.create_task_group() as tg:
            for _ in range(self._concurrency):
                tg.start_soon(self._worker)

    async def _worker(self) -> None:
        while True:
            while not self._heap:
                self._ready = anyio.Event()
                await self._ready.wait()
            _, _, outcome = heapq.heappop(self._heap)
            task = outcome.task
            assert task is not None
            try:
                name = file_name_for(task.id, task.format)
                path = self._directory / name
                if path.resolve().parent != self._directory.resolve():
                    raise ValueError(
                        f"task id {task.id!r} would be saved outside {self._directory}"
                    )
                saved = await self._download(task, path)
                result = Outcome(outcome.id, outcome.kind, task, None, saved)
            except _BULK_ERRORS as exc:
                result = Outcome(outcome.id, outcome.kind, task, exc, None)
            self._deliver(result)


class PollerFactory(Protocol):
    """Builds a watch's poller, given where its outcomes and a refused key go."""

    def __call__(
        self,
        *,
        on_outcome: Callable[[Outcome], object],
        on_fatal: Callable[[BaseException], object],
    ) -> Poller: ...


def _deliver(send: MemoryObjectSendStream[Outcome], outcome: Outcome) -> None:
    """Hand an outcome to the iteration, unless it has ended (a refused key ended it:
    what finishes after that has nobody to go to)."""
    with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        send.send_nowait(outcome)


@asynccontextmanager
async def _background() -> AsyncIterator[TaskGroup]:
    """A task group for work that runs until the block ends: cancelled then, and what
    the block raised passes on as itself, not wrapped in an ExceptionGroup."""
    tg = anyio.create_task_group()
    await tg.__aenter__()
    try:
        yield tg
    finally:
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)


@asynccontextmanager
async def open_watch(
    make_poller: PollerFactory,
    ids: Iterable[str | Task],
    *,
    kind: Kind,
    timeout: float | None,
    batch_timeout: float | None,
    download_dir: Path | None,
    download: Callable[[Task, Path], Awaitable[Path]],
    download_workers: int,
) -> AsyncIterator[Watch]:
    """Run a watch: a poller whose outcomes go (through a download queue, with a
    ``download_dir``) to the :class:`Watch` the caller iterates.

    Args:
        make_poller: Builds the poller, given its ``on_outcome`` and ``on_fatal``.
        ids: The tasks to watch.
        kind: The kind of plain string ids.
        timeout: Each task's deadline from now; ``None``: none.
        batch_timeout: One deadline for the whole batch.
        download_dir: Where succeeded videos are saved, or None.
        download: Saves one task's video to a path.
        download_workers: Downloads of this watch at once.
    """
    if download_dir is not None and download_workers < 1:
        raise ValueError(f"download_workers must be at least 1, got {download_workers}")
    # Unbounded: the poller must never block on a slow consumer (outcomes are small).
    send, receive = anyio.create_memory_object_stream[Outcome](math.inf)
    fatal: list[BaseException] = []

    def deliver(outcome: Outcome) -> None:
        _deliver(send, outcome)

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        send.close()  # the iteration raises it once what came before is read

    queue = (
        None
        if download_dir is None
        else DownloadQueue(download, download_dir, deliver, download_workers)
    )
    poller = make_poller(on_outcome=deliver if queue is None else queue.route, on_fatal=on_fatal)
    async with send, receive, poller, _background() as background:
        if queue is not None:
            background.start_soon(queue.run)
        deadline = math.inf if batch_timeout is None else poller.now() + batch_timeout
        outcomes = Watch(poller, receive, send, kind, timeout, deadline, fatal)
        outcomes.add(ids)
        yield outcomes
