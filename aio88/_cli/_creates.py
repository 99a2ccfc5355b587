"""The creates of one ``aio88 run``: each job is paid for at most once.

Every create is committed to the ledger as ``submitting`` just before its first byte is
written (the transport's :class:`~aio88._sending.SendMark`), and back to ``pending`` while
a 429's backoff runs, so that a crash at any moment leaves ``submitting`` only for a create
the server may have. After a failure the server's answer decides (:mod:`aio88._billing`):
not created -> ``pending`` (sent again in this run, a few times, after a pause), refused
-> ``rejected``, unknown -> ``unconfirmed``. The first create goes alone: a refused key
costs one create. :meth:`Creates.stop` is the first Ctrl-C: nothing more is sent, creates
not sent are called off, and those sent get a few seconds to answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import anyio

from .._billing import create_fate
from .._client import Client
from .._config import (
    CREATE_RESENDS,
    FLEET_BATCH_PATIENCE,
    FLEET_BATCH_TEND,
    SETUP_PROBES,
    RetryPolicy,
)
from .._errors import (
    Aio88Error,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    FleetError,
    PermissionDeniedError,
    RateBudgetUnavailableError,
)
from .._ledger import Job, LedgerStore, SharedLedger
from .._models import GenerationTask, Video
from .._retry import backoff_delay, half_jitter
from .._sending import SendMark, marking
from ..testing._arguments import UsageError
from ._jobs import create_job
from ._output import Printer


class _CalledOff(Exception):
    """Raised by the sending hook after Ctrl-C: the create must not go out."""


class Creates:
    """Sends the creates of one run, ``concurrency`` at a time, keeping the ledger true.

    Args:
        client: Sends them.
        ledger: Where each job's state is committed.
        printer: Where each result is reported.
        on_created: Called with each task created (to watch it).
        on_given_up: Called once for each job that will not become a task in this run,
            with the state it is left in (``"lost"``: another worker took the job over
            while this one was taken for dead; its state is that worker's business).
        concurrency: Creates in flight at most.
        shared: The ledger again, when workers share it (a fleet): jobs are then claimed
            one by one (:meth:`run_claimed`) and a new try of a create must claim its
            job again.
    """

    def __init__(
        self,
        client: Client,
        ledger: LedgerStore,
        printer: Printer,
        *,
        on_created: Callable[[Job, GenerationTask | Video], None],
        on_given_up: Callable[[Job, str], None],
        concurrency: int,
        shared: SharedLedger | None = None,
    ) -> None:
        self._client = client
        self._ledger = ledger
        self._shared = shared
        self._printer = printer
        self._on_created = on_created
        self._on_given_up = on_given_up
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._slots = anyio.Semaphore(concurrency)
        self._in_flight: dict[str, tuple[anyio.CancelScope, SendMark]] = {}
        self._claimed: set[str] = set()  # claimed from a shared ledger, not settled yet
        self._backoff = RetryPolicy()
        self.stopping = False
        """No more creates will be sent (a Ctrl-C, or a fatal error)."""
        self.fatal: Exception | None = None
        """Why the run cannot go on: the key refused, no such route at the base URL, the
        API unreachable. Every job not created stays ``pending``."""
        self._proven = False  # a create succeeded: the key, the URL and the network work
        self._failed_first = 0  # jobs whose create failed, sent, before any succeeded
        self._settled: set[str] = set()  # jobs whose final state is committed
        self._lost: set[str] = set()  # jobs another worker took over (a shared ledger)
        self.left_pending: set[str] = set()
        """Jobs this run gave up as ``pending`` (a shared ledger: not claimed again)."""
        self.settled = anyio.Event()
        """Set when every job of :meth:`run` has settled (created, given up or called off)."""

    async def run(self, jobs: list[Job]) -> None:
        """Create every job: one at a time until one succeeds, then the rest together."""
        rest = list(jobs)
        try:
            # A refused key, a wrong base URL or an unreachable API then costs one create
            # (or none), not one per concurrency slot.
            while rest and not self._proven and not self.stopping:
                await self._create(rest.pop(0))
            async with anyio.create_task_group() as tg:
                for job in rest:
                    tg.start_soon(self._create, job)
        finally:
            self.settled.set()

    async def run_claimed(self, claim: Callable[[set[str]], Awaitable[Job | None]]) -> None:
        """Create the jobs of a shared ledger: claim one whenever a create slot is free
        (the first alone until one succeeds), until the batch needs this worker no more
        (``open_elsewhere``). Not merely until no job is ``pending``: a job being created
        elsewhere may be put back (a 429, a worker giving up on it, Ctrl-C), and must then
        be created by a worker still here."""
        assert self._shared is not None
        shared = self._shared
        try:
            while not self._proven and not self.stopping:
                job = await claim(self._not_to_claim())
                if job is None:
                    if not await shared.open_elsewhere(self.left_pending):
                        return
                    await anyio.sleep(FLEET_BATCH_TEND)  # held by a try of another worker
                    continue
                self._claimed.add(job.key)
                await self._create(job)
            async with anyio.create_task_group() as tg:
                while not self.stopping:
                    # The slot first, then the claim: a job is ``submitting`` only while
                    # a create of this worker is on its way.
                    await self._slots.acquire()
                    try:
                        job = None if self._stopped() else await claim(self._not_to_claim())
                    except BaseException:
                        self._slots.release()
                        raise
                    if job is not None:
                        self._claimed.add(job.key)  # its create starts in a moment
                        tg.start_soon(self._create_in_slot, job)
                        continue
                    self._slots.release()
                    if self._stopped() or not await shared.open_elsewhere(self.left_pending):
                        break
                    await anyio.sleep(FLEET_BATCH_TEND)
        finally:
            self.settled.set()

    def _not_to_claim(self) -> set[str]:
        # Its own creates waiting out a 429 are ``pending`` in the ledger (so that a crash
        # then leaves them to be sent, not unconfirmed): claimed again here, they would
        # have two creates in one worker. Another worker may take them; the waiting try
        # then finds them gone (reclaim) and sends nothing. Every job it claimed and has
        # not settled is named (one claim loop per worker: run_claimed).
        return self.left_pending | self._claimed

    def _stopped(self) -> bool:
        # A method, not the attribute: a Ctrl-C may set it while this task awaits.
        return self.stopping

    async def _create_in_slot(self, job: Job) -> None:
        try:
            await self._create(job)
        finally:
            self._slots.release()

    def stop(self, grace: float) -> None:
        """Send nothing more. Creates not sent yet are called off (their jobs stay
        ``pending``); creates already sent get ``grace`` seconds to answer."""
        self.stopping = True
        deadline = anyio.current_time() + grace
        for scope, mark in self._in_flight.values():
            # Committed means its bytes may be about to go (aiohttp writes the body from
            # a task of its own): it gets the grace too, rather than a guess.
            if mark.sent or mark.committed:
                scope.deadline = min(scope.deadline, deadline)
            else:
                scope.cancel()

    def stop_now(self) -> None:
        """Call off every create at once (a sent one becomes ``unconfirmed``); a shared
        ledger whose database is out of reach is no longer waited for."""
        self.stopping = True
        if self._shared is not None:
            self._shared.stop_waiting()
        for scope, _ in self._in_flight.values():
            scope.cancel()

    async def _create(self, job: Job) -> None:
        mark = SendMark(
            before_write=partial(self._before_write, job),
            not_taken=partial(self._set, job, "pending"),
        )
        if job.state == "submitting":
            # Claimed from a shared ledger: committed ``submitting`` already, by the claim,
            # and confirmed just before the first byte is written (_before_write).
            mark.claimed()
        try:
            with anyio.CancelScope() as scope:
                self._in_flight[job.key] = (scope, mark)
                await self._send(job, mark)
        finally:
            # Settled, or called off by stop(), or cancelled with the whole run: what
            # the ledger says must match what may have reached the server.
            del self._in_flight[job.key]
            try:
                if job.key not in self._settled:
                    # Shielded: a cancelled run must still leave the ledger true.
                    with anyio.CancelScope(shield=True):
                        await self._call_off(job, mark)
            finally:
                self._claimed.discard(job.key)

    async def _before_write(self, job: Job) -> None:
        if self.stopping or job.key in self._lost:
            # A retry or redirect of a create after Ctrl-C, or of a job another worker
            # has now: nothing of it goes out.
            raise _CalledOff
        if self._shared is not None:
            if not await self._shared.reclaim(job.key):
                # Taken by another worker since it was claimed or put back (this one
                # was stopped for over two leases, or waited out a 429): theirs now.
                self._lose(job, None)
                raise _CalledOff
            return
        await self._set_now(job, "submitting", None)

    async def _send(self, job: Job, mark: SendMark) -> None:
        """Send ``job``'s create until it settles, or until the run stops."""
        for attempt in range(CREATE_RESENDS + 1):
            if attempt:
                await anyio.sleep(backoff_delay(attempt, self._backoff))
            async with self._limiter:
                if self.stopping:
                    return
                try:
                    with marking(mark):
                        task = await self._create_when_budgeted(job)
                except _CalledOff:
                    return
                except FleetError:
                    raise  # the batch's database is gone: the worker stops
                except (AuthenticationError, PermissionDeniedError) as exc:
                    await self._end_run(job, exc)  # refused: nothing billed
                    return
                except (Aio88Error, ValueError, TypeError, OSError) as exc:
                    # ValueError, TypeError, OSError: local (a reference image unreadable
                    # now), so normally nothing was sent; the mark says for sure.
                    if (fatal := self._fatal(exc, mark)) is not None:
                        await self._end_run(job, fatal)
                        return
                    fate = create_fate(exc, sent=mark.sent)
                    if fate.state == "not_created" and attempt < CREATE_RESENDS and mark.sent:
                        # Complete, and it created nothing: sent again after a pause.
                        await mark.not_taken()
                        if job.key in self._lost:
                            return  # not ours to send again
                        self._printer.detail("resend", key=job.key, error=fate.why)
                        continue
                    state = "pending" if fate.state == "not_created" else fate.state
                    await self._give_up(job, state, fate.why, mark.sent)
                    return
            # Committed at once: from here on a crash leaves a task to poll, not to guess.
            with anyio.CancelScope(shield=True):  # the task exists: it must be recorded
                mine = await self._ledger.set_state(job.key, "submitted", task_id=task.id)
            self._settled.add(job.key)
            if not mine:
                self._lose(job, task.id)
                return
            self._proven = True
            self._printer.detail("created", key=job.key, id=task.id)
            self._on_created(job, task)
            return

    async def _create_when_budgeted(self, job: Job) -> GenerationTask | Video:
        """The job's create; while a fleet's rate budget cannot hand out a token (its
        database out of reach: nothing was sent), waited for as the shared ledger waits
        for its database, not counted as a failed try."""
        waits = 0
        since = anyio.current_time()
        while True:
            try:
                return await create_job(self._client, job)
            except RateBudgetUnavailableError as exc:  # noqa: PERF203 - a wait, not a hot loop
                if self.stopping:
                    raise _CalledOff from None
                if anyio.current_time() - since >= FLEET_BATCH_PATIENCE:
                    raise FleetError(
                        f"the fleet's rate budget has been out of reach for "
                        f"{FLEET_BATCH_PATIENCE:.0f} s ({exc}); this worker stops. Its jobs "
                        "stay as they are; rerun it once the database is back"
                    ) from None
                await anyio.sleep(backoff_delay(waits, self._backoff, half_jitter))
                waits += 1

    def _fatal(self, error: Exception, mark: SendMark) -> Exception | None:
        """The error that ends the run, if ``error`` says every create would fail alike.
        Only before a create has succeeded: after, the set-up is proven, and a failure is
        the job's own."""
        if self._proven:
            return None
        if (
            isinstance(error, APIStatusError)
            and error.status_code in (404, 405)
            and "model" not in str(error).lower()  # "no such model" is the job's own
        ):
            return UsageError(
                f"the API has no create route at {self._client.base_url} (HTTP "
                f"{error.status_code}); check AIO88_BASE_URL: the API's root, such as "
                "https://88api.ai, without /videos. Nothing was created"
            )
        if isinstance(error, APIConnectionError) and not mark.sent:
            return APIConnectionError(
                f"cannot reach the API ({error}); nothing was sent: rerun when it is "
                "reachable (check AIO88_BASE_URL and any proxy settings)",
                request_sent=False,
            )
        return None

    async def _end_run(self, job: Job, why: Exception) -> None:
        """Stop the run for ``why``; ``job`` stays pending (nothing of it was billed)."""
        self.fatal = self.fatal or why
        self.stopping = True
        self._settled.add(job.key)
        if not await self._set_now(job, "pending", None):
            return
        self.left_pending.add(job.key)
        self._on_given_up(job, "pending")

    async def _give_up(self, job: Job, state: str, why: str, sent: bool) -> None:
        self._settled.add(job.key)
        if not await self._set_now(job, state, why):
            return
        if state == "pending":
            self.left_pending.add(job.key)
        self._printer.problem(state, key=job.key, line=job.line, error=why)
        self._on_given_up(job, state)
        if sent and not self._proven:
            # Before any success, failures in a row mean the set-up, not the jobs: stop
            # before they cost more.
            self._failed_first += 1
            if self._failed_first >= SETUP_PROBES:
                self.fatal = self.fatal or Aio88Error(
                    f"the first {SETUP_PROBES} creates all failed (the last: {why}); the run "
                    "stops there, so that a set-up problem costs no more. The jobs not sent "
                    "stay pending: rerun once the API takes creates"
                )
                self.stopping = True

    async def _call_off(self, job: Job, mark: SendMark) -> None:
        """The create stopped before it settled (a Ctrl-C): sent or not decides."""
        if job.key in self._lost:
            return  # said, and given up, when it was lost
        if mark.sent:
            if not await self._set_now(
                job, "unconfirmed", "the run stopped before its answer came"
            ):
                return
            self._printer.problem(
                "unconfirmed",
                key=job.key,
                line=job.line,
                error="sent, and the run stopped before the answer came",
            )
            self._on_given_up(job, "unconfirmed")
            return
        if mark.committed and not await self._set_now(job, "pending", None):
            return
        self.left_pending.add(job.key)
        self._on_given_up(job, "pending")

    async def _set(self, job: Job, state: str) -> None:
        await self._set_now(job, state, None)

    async def _set_now(self, job: Job, state: str, why: str | None) -> bool:
        """Commit ``job``'s new state; ``False``: the job is no longer this worker's
        (a shared ledger: taken over while this worker was taken for dead)."""
        if job.key in self._lost:
            return False
        if await self._ledger.set_state(job.key, state, error=why):
            return True
        self._lose(job, None)
        return False

    def _lose(self, job: Job, task_id: str | None) -> None:
        """Another worker took ``job`` over: leave it alone, and say so (with the task id
        this worker's create got, if any: the batch has the job ``unconfirmed``, and
        ``--reconcile`` would find that task)."""
        if job.key in self._lost:
            return
        self._lost.add(job.key)
        self._settled.add(job.key)
        self._printer.detail(
            "lost",
            key=job.key,
            id=task_id,
            error="another worker of the batch has this job now (it was put back or taken "
            "over); left to it",
        )
        self._on_given_up(job, "lost")
