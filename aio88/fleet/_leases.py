"""Task leases in PostgreSQL: which live process polls each task, and the waker that tells
every other process's waiters when it ends (:class:`FleetLeases`, the fleet's
:class:`~aio88._coordination.TaskLeases`).

One row per task in ``aio88_tasks`` (``owner``, ``lease_until``, ``finished_at``,
``task_json``). The poller's calls are synchronous and do no I/O: they change local state
and queue work; one background task sends the queued work in batches (10,000 ``track()``
calls are a couple of statements), and the fleet's heartbeat (:meth:`FleetLeases.renew`)
renews every held lease in one statement and retries whatever failed. Every statement runs
under one lock, so this process's writes reach the database in the order they were asked
for (a ``finished()`` before the ``untrack()`` that follows it, a release before a later
re-claim of the same id).

A release (``untrack``, :meth:`FleetLeases.release_all`) is announced on the hint channel:
the other processes waiting on the task would otherwise try again only when the lease
they last saw runs out; a hint makes them claim at once. A claim whose answer may predate
such a release (a hint for the task came while it was on its way: its snapshot may show
the old lease) is asked again at once instead of trusting that lease.

Several pollers of one process (``client.watch()`` and ``client.poller()``, two clients
on one fleet) share the process's leases: ``track``/``untrack`` are counted per task, and
an end one of them records reaches the others.

Safety does not depend on the machines' clocks agreeing: a lease ends at the database's
``clock_timestamp() + lease``, and this process stops believing it holds one at the
monotonic time the claim or renewal was *sent* plus ``lease`` minus a margin, which is
before the database lets anyone else take it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, cast

from .._config import FLEET_BATCH, FLEET_HINT_BACKLOG, FLEET_LATE_HINTS, FLEET_LEASE_MARGIN
from ._errors import FleetError
from ._outage import OutageLog

if TYPE_CHECKING:
    import asyncpg

    from .._coordination import FinishedHandler, HintHandler
    from .._models import Kind

__all__ = ["FINISHED_CHANNEL", "HINT_CHANNEL", "FleetLeases"]

log = logging.getLogger("aio88.fleet")

#: The channel a task's end is announced on; the payload is its id.
FINISHED_CHANNEL = "aio88_finished"
#: The channel a received callback is announced on; the payload is the task's id.
HINT_CHANNEL = "aio88_hint"

_KINDS = frozenset({"generation", "video"})

# Claim a batch of tasks. Rows nobody has yet are inserted as ours; existing rows are taken
# only where unfinished and unowned, ours, or past their lease, locked FOR UPDATE SKIP
# LOCKED: the lock re-checks that condition against the newest committed row (so two
# claimers can never both win), and a row another transaction is busy with (its holder
# renewing it, another claimer) is skipped instead of waited for, so a claim never blocks
# on, or deadlocks with, another process. The final SELECT reads the statement's snapshot,
# which is what the rows we did not get say: who holds them until when (seconds left by
# the database's clock), or that they are finished (with the task, for the waiters).
_CLAIM = """
WITH req(task_id, kind) AS (
    SELECT * FROM unnest($1::text[], $2::text[])
), inserted AS (
    INSERT INTO aio88_tasks AS t (task_id, kind, owner, lease_until)
    SELECT task_id, kind, $3, clock_timestamp() + make_interval(secs => $4) FROM req
    ON CONFLICT (task_id) DO NOTHING
    RETURNING t.task_id
), free AS (
    SELECT t.task_id FROM aio88_tasks t JOIN req USING (task_id)
    WHERE t.finished_at IS NULL
      AND (t.owner IS NULL OR t.owner = $3 OR t.lease_until < clock_timestamp())
    FOR UPDATE OF t SKIP LOCKED
), taken AS (
    UPDATE aio88_tasks t
    SET owner = $3, lease_until = clock_timestamp() + make_interval(secs => $4),
        updated_at = now()
    FROM free WHERE t.task_id = free.task_id
    RETURNING t.task_id
)
SELECT req.task_id,
       (i.task_id IS NOT NULL OR k.task_id IS NOT NULL) AS mine,
       t.finished_at IS NOT NULL AS finished,
       t.kind,
       CASE WHEN t.finished_at IS NOT NULL THEN t.task_json END AS task_json,
       extract(epoch FROM t.lease_until - clock_timestamp())::float8 AS remaining
FROM req
LEFT JOIN inserted i ON i.task_id = req.task_id
LEFT JOIN taken k ON k.task_id = req.task_id
LEFT JOIN aio88_tasks t ON t.task_id = req.task_id
"""

# Renew this process's leases: the ids not returned are no longer ours.
_RENEW = """
UPDATE aio88_tasks
SET lease_until = clock_timestamp() + make_interval(secs => $3), updated_at = now()
WHERE task_id = ANY($1::text[]) AND owner = $2 AND finished_at IS NULL
RETURNING task_id
"""

# Record ends, only where this process still holds the lease and nobody recorded one
# first; the notification goes out with the commit of the same statement, so a waiter
# woken by it always finds the row.
_FINISH = """
WITH done AS (
    UPDATE aio88_tasks t
    SET finished_at = clock_timestamp(), kind = v.kind, task_json = v.task_json,
        lease_until = NULL, updated_at = now()
    FROM unnest($1::text[], $2::text[], $3::bytea[]) AS v(task_id, kind, task_json)
    WHERE t.task_id = v.task_id AND t.owner = $4 AND t.finished_at IS NULL
    RETURNING t.task_id
)
SELECT count(pg_notify('aio88_finished', task_id)) FROM done
"""

# Give leases up. Other processes waiting on those tasks keep the old expiry and would try
# only then: the release is announced on the hint channel, which makes them claim now.
_RELEASE = """
WITH freed AS (
    UPDATE aio88_tasks SET owner = NULL, lease_until = NULL, updated_at = now()
    WHERE task_id = ANY($1::text[]) AND owner = $2 AND finished_at IS NULL
    RETURNING task_id
)
SELECT count(pg_notify('aio88_hint', task_id)) FROM freed
"""

_RELEASE_ALL = """
WITH freed AS (
    UPDATE aio88_tasks SET owner = NULL, lease_until = NULL, updated_at = now()
    WHERE owner = $1 AND finished_at IS NULL
    RETURNING task_id
)
SELECT count(pg_notify('aio88_hint', task_id)) FROM freed
"""

_READ_FINISHED = """
SELECT task_id, kind, task_json FROM aio88_tasks
WHERE task_id = ANY($1::text[]) AND finished_at IS NOT NULL
"""


_HINT = "SELECT count(pg_notify('aio88_hint', id)) FROM unnest($1::text[]) AS id"


class _Entry:
    """What this process knows of one tracked task."""

    __slots__ = (
        "done",
        "ended",
        "heard",
        "held",
        "held_until",
        "hints",
        "kind",
        "refs",
        "retry_at",
    )

    def __init__(self, kind: Kind) -> None:
        self.kind: Kind = kind
        #: How many ``track()`` calls (pollers of this process) wait on it.
        self.refs = 1
        #: The last claim or renewal made it ours (it may have expired locally since).
        self.held = False
        #: Local monotonic time until which it is surely ours.
        self.held_until = 0.0
        #: Not ours: when a claim may succeed (the other owner's lease runs out).
        self.retry_at = 0.0
        #: Its end is known (recorded here or reported): no more claims or renewals.
        self.done = False
        #: The end as known (kind, task), for a poller here that tracks it later.
        self.ended: tuple[Kind, bytes] | None = None
        #: Hints heard for it; ``heard``: how many had been when the last answered claim
        #: was sent. Unequal: the answer may predate a release (see ``_claimed``).
        self.hints = 0
        self.heard = 0


class _DatabaseError(Exception):
    """A statement failed; the pass stops and its work waits for the next heartbeat."""


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), FLEET_BATCH):
        yield ids[start : start + FLEET_BATCH]


class FleetLeases:
    """:class:`~aio88._coordination.TaskLeases` kept in PostgreSQL's ``aio88_tasks``.

    ``aio88.fleet.Fleet`` makes and drives it: :meth:`start` once, :meth:`renew` on each
    heartbeat (every ``lease / 3`` seconds), :meth:`on_notify` for the ``aio88_finished``
    and ``aio88_hint`` channels, :meth:`on_reconnect` after its LISTEN connection came
    back, :meth:`release_all` then :meth:`aclose` on a clean exit.

    ``track``/``untrack`` are counted per id: the lease is kept, and the id tracked, until
    as many ``untrack`` calls as ``track`` calls (one each per poller of this process that
    waits on it). Every subscriber's ``on_finished`` is called when a tracked task's end
    becomes known: another process recorded it, or its row says so when it is claimed or
    re-read, or another poller of this process recorded it with :meth:`finished` (one
    event-loop turn later, when the recording poller has dropped it already); and again,
    one turn later, when a poller here tracks (or claims) an id whose end is known. A
    subscriber that no longer waits on the id ignores the call.

    After :meth:`release_all` or :meth:`aclose`, :meth:`claim` raises
    :class:`~aio88.fleet.FleetError`: a poller still running would otherwise never poll
    again (the fleet must be closed after the clients and pollers that use it).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        process_id: str,
        lease: float,
        clock: Callable[[], float] = time.monotonic,
        outage: OutageLog | None = None,
    ) -> None:
        if not lease > 0:
            raise ValueError(f"lease must be more than 0 seconds, got {lease!r}")
        self._pool = pool
        self._me = process_id
        self._lease = float(lease)
        # How long after sending a claim or renewal this process still counts the lease
        # as its own: the database ends it ``lease`` after *executing* the statement, which
        # is later, and the margin covers the two clocks running at slightly different
        # rates and a poll already under way when it ends.
        self._trust = self._lease * (1 - FLEET_LEASE_MARGIN)
        self._clock = clock
        self._tracked: dict[str, _Entry] = {}
        self._subscribers: list[tuple[FinishedHandler, HintHandler]] = []
        # work queued by the synchronous methods, sent by the next pass
        self._to_claim: set[str] = set()
        self._to_release: set[str] = set()
        self._to_finish: dict[str, tuple[Kind, bytes]] = {}
        self._to_read: set[str] = set()
        # ids in the order hinted (a dict: each once, the oldest first), at most
        # FLEET_HINT_BACKLOG of them while the database is down
        self._to_hint: dict[str, None] = {}
        # Hints that waited out an outage: sent again on every heartbeat or reconnect for
        # FLEET_LATE_HINTS seconds after the pass that sent them, because the other
        # processes' LISTEN connections come back later (their reconnect backoff), and a
        # NOTIFY nobody listened to is lost (their waits would end at the fallback poll).
        self._late_hints: dict[str, None] = {}
        self._late_until = 0.0
        self._hints_failed = False
        self._outage = outage or OutageLog(log)
        self._reread_all = False
        # claim() waits on the event of the batch its id is in (queued or being sent)
        self._claim_queued: asyncio.Event | None = None
        self._claim_sent: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # After a failed pass the background task waits for the next heartbeat (or a
        # claim() that needs an answer) instead of retrying in a tight loop.
        self._failing = False
        self._urgent = False
        self._closed = False
        self._runner: asyncio.Task[None] | None = None

    @property
    def lease(self) -> float:
        """How long a lease lasts unless renewed, in seconds."""
        return self._lease

    # -- driven by the Fleet ------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task that sends queued work (owned until :meth:`aclose`)."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="aio88.fleet leases"
            )

    async def renew(self) -> None:
        """The heartbeat: send any queued work, renew every held lease in one statement
        (an id it does not renew is lost, at once), and try to claim the tracked tasks
        whose holder's lease has run out, in one more. Logs database errors instead of
        raising them."""
        if self._closed:
            return
        self._resend_late_hints()
        async with self._lock:
            await self._guarded_pass(beat=True)

    def _resend_late_hints(self) -> None:
        """Queue again the hints a pass sent after an outage (see ``_late_hints``)."""
        if self._late_hints:
            if self._clock() > self._late_until:
                self._late_hints = {}
            else:
                self._queue_hints(list(self._late_hints))

    def on_notify(self, channel: str, payload: str) -> None:
        """A notification on ``aio88_finished`` or ``aio88_hint`` (payload: a task id)."""
        if channel == FINISHED_CHANNEL:
            entry = self._tracked.get(payload)
            if entry is not None and not entry.done:
                self._to_read.add(payload)
                self._kick()
        elif channel == HINT_CHANNEL:
            entry = self._tracked.get(payload)
            if entry is not None:
                entry.hints += 1
                if not entry.held:
                    # its holder may have let it go (a release is announced so): a claim
                    # is worth a round trip again, from claim() or the next heartbeat
                    entry.retry_at = 0.0
            for _, on_hint in list(self._subscribers):
                self._call(on_hint, payload)

    async def on_reconnect(self) -> None:
        """The LISTEN connection is back: notifications sent meanwhile are lost, so read
        every tracked task's row again and report the ones that finished."""
        if self._closed:
            return
        self._reread_all = True
        for entry in self._tracked.values():
            if not entry.held:  # a release's hint may have been lost too: claim anew
                entry.retry_at = 0.0
        self._resend_late_hints()
        async with self._lock:
            await self._guarded_pass(beat=False)

    async def release_all(self) -> None:
        """A clean exit: send the queued work (recorded ends first), then give up every
        lease this process holds, so others take its tasks at once."""
        if self._closed:
            return
        async with self._lock:
            await self._guarded_pass(beat=False)
            self._closed = True
            try:
                await self._pool.fetch(_RELEASE_ALL, self._me, timeout=self._lease)
            except Exception as exc:  # logged: the leases then simply expire
                log.warning("aio88 fleet: could not release this process's leases: %s", exc)
            for entry in self._tracked.values():
                entry.held = False
        self._answer_claims()

    async def aclose(self) -> None:
        """Stop the background task (leases still held expire after ``lease``)."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])  # raises only if this call itself is cancelled
        self._answer_claims()

    # -- the TaskLeases protocol (the poller's side) --------------------------------------

    def subscribe(self, on_finished: FinishedHandler, on_hint: HintHandler) -> Callable[[], None]:
        """Have ``on_finished`` called when another process records a tracked task's end
        (or its row already says it ended), ``on_hint`` when any process announces a
        callback. Returns the function that unsubscribes."""
        pair = (on_finished, on_hint)
        self._subscribers.append(pair)

        def unsubscribe() -> None:
            if pair in self._subscribers:
                self._subscribers.remove(pair)

        return unsubscribe

    def track(self, task_id: str, kind: Kind) -> None:
        """Wait on ``task_id`` (one more poller here does): claim it in the background (if
        its row says it ended, ``on_finished`` is called soon) and report its end if
        another process, or another poller here, records it."""
        entry = self._tracked.get(task_id)
        if entry is not None:
            entry.refs += 1
            if entry.ended is not None:  # the new tracker has not heard of the end
                self._tell_soon(task_id, *entry.ended)
            return
        self._tracked[task_id] = _Entry(kind)
        if self._closed:
            return  # counted all the same, so that the untrack calls balance
        # A release still queued would undo the claim below: this process keeps the lease.
        self._to_release.discard(task_id)
        self._to_claim.add(task_id)
        self._kick()

    def untrack(self, task_id: str) -> None:
        """One poller here no longer waits on ``task_id``; when none does (as many calls as
        to :meth:`track`), release its lease (in the background)."""
        entry = self._tracked.get(task_id)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs > 0:
            return
        del self._tracked[task_id]
        self._to_claim.discard(task_id)
        self._to_read.discard(task_id)
        # A claim being sent may still make it ours: its answer queues the release then.
        if entry.held and not entry.done:
            self._to_release.add(task_id)
            self._kick()

    def holds(self, task_id: str) -> bool:
        """Whether this process holds ``task_id``'s lease now, by the last claim or
        renewal and the local clock (no I/O)."""
        entry = self._tracked.get(task_id)
        return (
            entry is not None and entry.held and not entry.done and self._clock() < entry.held_until
        )

    async def claim(self, task_id: str, kind: Kind) -> bool:
        """Take ``task_id``'s lease if nobody else holds it (tracking it if it was not);
        whether it is held. Answers at once while it is held, or while another process's
        lease on it is known to be valid; otherwise joins the claim of the next batch (or
        the one being sent for this id), and once more if a hint for it came before that
        answer was taken in (the answer may show a lease released meanwhile). ``False``
        also when the database cannot be reached (the background claims it again on the
        next heartbeat).

        Raises:
            FleetError: The fleet was closed (:meth:`release_all`, :meth:`aclose`).
        """
        self._check_open()
        if task_id not in self._tracked:
            self.track(task_id, kind)
        answer = await self._claim_once(task_id, last=False)
        if answer is None:
            # A hint came after the claim was sent: its holder may have released it after
            # the snapshot that answered was taken. One more round trip says.
            answer = await self._claim_once(task_id, last=True)
        return bool(answer)

    async def _claim_once(self, task_id: str, *, last: bool) -> bool | None:
        """One claim of ``task_id``; ``None`` (unless ``last``): not held, but the answer
        may predate a release, so worth asking again now."""
        entry = self._tracked.get(task_id)
        if entry is None:  # every poller here dropped it while the claim was on its way
            return False
        if entry.done:
            if entry.ended is not None:  # a caller still claiming it missed the end
                self._tell_soon(task_id, *entry.ended)
            return False
        now = self._clock()
        if entry.held and now < entry.held_until:
            return True
        if not entry.held and now < entry.retry_at:
            return False
        event = self._claim_sent.get(task_id)
        if event is None:
            self._to_claim.add(task_id)
            if self._claim_queued is None:
                self._claim_queued = asyncio.Event()
            event = self._claim_queued
            self._urgent = True
            self._kick()
        await event.wait()
        self._check_open()
        if self.holds(task_id):
            return True
        entry = self._tracked.get(task_id)
        if last or entry is None or entry.done or entry.held or entry.heard == entry.hints:
            return False
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise FleetError(
                "the fleet was closed while a poller still uses it: close the fleet after "
                "the clients and pollers that use it (async with Fleet(...) as fleet: "
                "async with Client(fleet=fleet) as client: ...)"
            )

    def finished(self, task_id: str, kind: Kind, task_json: bytes) -> None:
        """This process saw ``task_id`` end: record it (in the background, only while this
        process still holds the lease: the first writer wins) and wake every other
        process's waiters, and this process's other pollers that wait on it. Does nothing
        for a task this process does not hold."""
        entry = self._tracked.get(task_id)
        if entry is None or not entry.held or entry.done:
            return
        entry.done = True
        entry.ended = (kind, task_json)
        self._to_claim.discard(task_id)
        self._to_finish[task_id] = (kind, task_json)
        self._kick()
        if entry.refs > 1:
            # Another poller here waits on it too, and our own NOTIFY is not reported back
            # (see on_notify). Told one turn later, not now: the recording poller calls
            # this before it drops the task, and must not be finished twice.
            self._tell_soon(task_id, kind, task_json)

    def hint(self, task_id: str) -> None:
        """A callback for ``task_id`` arrived here: announce it to every process (in the
        background), so its lease holder polls it now. Sends nothing when the holder is
        this process (the poller acts on it locally)."""
        if self._closed or self.holds(task_id):
            return
        self._queue_hints([task_id])
        self._kick()

    def _queue_hints(self, ids: Iterable[str]) -> None:
        """Queue hints for ``ids`` (the newest last), keeping at most ``FLEET_HINT_BACKLOG``: an
        outage long enough to fill it has outlasted the fallback polls of the oldest."""
        for task_id in ids:
            self._to_hint.pop(task_id, None)
            self._to_hint[task_id] = None
        excess = len(self._to_hint) - FLEET_HINT_BACKLOG
        if excess > 0:
            for task_id in list(self._to_hint)[:excess]:
                del self._to_hint[task_id]

    # -- the background ---------------------------------------------------------------

    def _kick(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Let the rest of a burst of synchronous calls queue up: one batch for all.
            await asyncio.sleep(0)
            if self._failing and not self._urgent:
                continue  # the next heartbeat retries
            async with self._lock:
                if self._closed:
                    return
                await self._guarded_pass(beat=False)

    async def _guarded_pass(self, *, beat: bool) -> None:
        """A pass whose failure is logged, never raised (the caller holds the lock)."""
        try:
            self._failing = not await self._pass(beat=beat)
        except Exception:  # a bug must not end the background task or the heartbeat
            log.exception("aio88 fleet: the lease task's pass failed")
            self._failing = True
            self._answer_claims()

    async def _pass(self, *, beat: bool) -> bool:
        """Send the queued work, in the order it matters: recorded ends (while the leases
        still hold), releases, the renewal, claims, reads, hints. Whether it all went."""
        self._urgent = False
        steps: list[Callable[[], Awaitable[None]]] = [self._send_finishes, self._send_releases]
        if beat:
            steps.append(self._send_renewal)
        try:
            for step in steps:
                await step()
            await self._send_claims(beat=beat)
            await self._send_reads()
            await self._send_hints()
        except _DatabaseError:
            # hints still queued waited out a failure: sent twice once it is back
            self._hints_failed = self._hints_failed or bool(self._to_hint)
            # claim() callers whose batch was not sent get their answer (False) now; the
            # ids stay queued for the next heartbeat
            self._answer_claims()
            return False
        return True

    def _answer_claims(self) -> None:
        event, self._claim_queued = self._claim_queued, None
        if event is not None:
            event.set()

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        try:
            rows = await self._pool.fetch(query, *args, timeout=self._lease)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # logged once per outage and then now and then, not once per statement
            self._outage.failed(exc)
            raise _DatabaseError from exc
        self._outage.ok()
        return rows

    async def _send_finishes(self) -> None:
        if not self._to_finish:
            return
        work, self._to_finish = self._to_finish, {}
        ids = sorted(work)
        try:
            for chunk in _chunks(ids):
                kinds = [work[i][0] for i in chunk]
                blobs = [work[i][1] for i in chunk]
                await self._fetch(_FINISH, chunk, kinds, blobs, self._me)
                for task_id in chunk:
                    del work[task_id]
        finally:
            # what was not sent goes first next time (newer ends of the same id win)
            self._to_finish = {**work, **self._to_finish}

    async def _send_releases(self) -> None:
        if not self._to_release:
            return
        ids = sorted(self._to_release)
        self._to_release = set()

        async def send(chunk: list[str]) -> None:
            await self._fetch(_RELEASE, chunk, self._me)

        def keep(rest: list[str]) -> None:  # unless tracked again: then it is wanted
            self._to_release.update(i for i in rest if i not in self._tracked)

        await self._in_chunks(ids, send, keep)

    async def _in_chunks(
        self,
        ids: list[str],
        send: Callable[[list[str]], Awaitable[None]],
        keep: Callable[[list[str]], None],
    ) -> None:
        """``send`` the ids in batches of ``FLEET_BATCH``; when one fails, ``keep`` those
        not sent (for the next pass) and stop."""
        done = 0
        try:
            for chunk in _chunks(ids):
                await send(chunk)
                done += len(chunk)
        except BaseException:  # a database error, or cancelled: nothing unsent is lost
            keep(ids[done:])
            raise

    async def _send_renewal(self) -> None:
        ids = sorted(i for i, e in self._tracked.items() if e.held and not e.done)
        for chunk in _chunks(ids):
            sent = self._clock()
            rows = await self._fetch(_RENEW, chunk, self._me, self._lease)
            renewed = {row["task_id"] for row in rows}
            for task_id in chunk:
                entry = self._tracked.get(task_id)
                if entry is None or not entry.held:
                    continue
                if task_id in renewed:
                    entry.held_until = sent + self._trust
                else:  # lost (taken after it expired, or finished): find out by claiming
                    entry.held = False
                    entry.retry_at = 0.0

    async def _send_claims(self, *, beat: bool) -> None:
        wanted = self._to_claim
        self._to_claim = set()
        event, self._claim_queued = self._claim_queued, None
        if beat:  # the heartbeat also takes over what other processes' leases let go
            now = self._clock()
            wanted.update(
                i
                for i, e in self._tracked.items()
                if not e.done and not e.held and e.retry_at <= now
            )
        ids = sorted(i for i in wanted if i in self._tracked and not self._tracked[i].done)
        if not ids:
            if event is not None:
                event.set()
            return
        event = event or asyncio.Event()
        for task_id in ids:
            self._claim_sent[task_id] = event

        async def send(chunk: list[str]) -> None:
            kinds = [self._tracked[i].kind if i in self._tracked else "video" for i in chunk]
            # the hints heard so far: one heard later may mean the answer is out of date
            marks = {i: (e, e.hints) for i in chunk if (e := self._tracked.get(i)) is not None}
            sent = self._clock()
            rows = await self._fetch(_CLAIM, chunk, kinds, self._me, self._lease)
            self._claimed(rows, sent, marks)

        try:
            await self._in_chunks(ids, send, self._to_claim.update)
        finally:
            for task_id in ids:
                if self._claim_sent.get(task_id) is event:
                    del self._claim_sent[task_id]
            event.set()

    def _claimed(
        self,
        rows: Iterable[asyncpg.Record],
        sent: float,
        marks: dict[str, tuple[_Entry, int]],
    ) -> None:
        for row in rows:
            task_id: str = row["task_id"]
            entry = self._tracked.get(task_id)
            if entry is None:  # untracked while the claim was on its way
                if row["mine"]:
                    self._to_release.add(task_id)
                    self._kick()
                continue
            if entry.done:
                continue
            if row["mine"]:
                entry.held = True
                entry.held_until = sent + self._trust
            elif row["finished"]:
                self._report(task_id, entry, row["kind"], row["task_json"])
            else:
                entry.held = False
                mark = marks.get(task_id)
                entry.heard = mark[1] if mark is not None and mark[0] is entry else -1
                remaining = row["remaining"]
                if entry.heard != entry.hints:
                    # A hint came while the claim was on its way, perhaps the holder's
                    # release: committed after the statement's snapshot was taken, it is
                    # not in the answer, which shows the old lease. Not trusted: the
                    # claim() waiting asks again at once, or the next heartbeat does.
                    entry.retry_at = 0.0
                elif remaining is None:
                    # the row appeared after the statement's snapshot (another process
                    # claimed it just now): ask again on the next heartbeat
                    entry.retry_at = sent
                else:
                    entry.retry_at = sent + max(remaining, 0.0)

    async def _send_reads(self) -> None:
        if self._reread_all:
            self._reread_all = False
            self._to_read.update(self._tracked)
        if not self._to_read:
            return
        ids = sorted(i for i in self._to_read if i in self._tracked and not self._tracked[i].done)
        self._to_read = set()

        async def send(chunk: list[str]) -> None:
            for row in await self._fetch(_READ_FINISHED, chunk):
                entry = self._tracked.get(row["task_id"])
                if entry is not None and not entry.done:
                    self._report(row["task_id"], entry, row["kind"], row["task_json"])

        await self._in_chunks(ids, send, self._to_read.update)

    async def _send_hints(self) -> None:
        if not self._to_hint:
            return
        ids = list(self._to_hint)
        self._to_hint = {}
        failed = self._hints_failed

        def keep(rest: list[str]) -> None:  # before the ones hinted since: they are newer
            newer, self._to_hint = self._to_hint, {}
            self._queue_hints([*rest, *newer])

        async def send(chunk: list[str]) -> None:
            await self._fetch(_HINT, chunk)

        await self._in_chunks(ids, send, keep)
        self._hints_failed = False
        if failed:
            self._late_hints.update(dict.fromkeys(ids))
            self._late_until = self._clock() + FLEET_LATE_HINTS

    def _report(self, task_id: str, entry: _Entry, kind: str, task_json: bytes | None) -> None:
        """Another process recorded ``task_id``'s end: tell every subscriber, once."""
        entry.done = True
        entry.held = False
        if task_json is None:
            # A row finished without the task (by hand, say). The waiters must still hear
            # of it: empty bytes do not decode, so the poller asks the API itself.
            log.warning("aio88 fleet: task %s is finished but its row holds no task", task_id)
            task_json = b""
        known = cast("Kind", kind) if kind in _KINDS else entry.kind
        entry.ended = (known, bytes(task_json))
        self._tell(task_id, *entry.ended)

    def _tell_soon(self, task_id: str, kind: Kind, task_json: bytes) -> None:
        """:meth:`_tell`, one event-loop turn later (the caller is a poller, mid-step)."""
        asyncio.get_running_loop().call_soon(self._tell, task_id, kind, task_json)

    def _tell(self, task_id: str, kind: Kind, task_json: bytes) -> None:
        """Every subscriber hears of ``task_id``'s end (those not waiting on it ignore it)."""
        for on_finished, _ in list(self._subscribers):
            self._call(on_finished, task_id, kind, task_json)

    @staticmethod
    def _call(handler: Callable[..., object], *args: object) -> None:
        try:
            handler(*args)
        except Exception:  # one subscriber's bug must not starve the others
            log.exception("aio88 fleet: a lease subscriber failed")
