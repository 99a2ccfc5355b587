"""One ``aio88 run`` batch shared by workers on several machines: the ledger in PostgreSQL.

``aio88 run JOBS --out DIR --ledger postgresql://...`` keeps its jobs in the table
``aio88_batch_jobs`` (one batch per database) instead of ``DIR/ledger.sqlite3``. Every
worker imports the jobs file (idempotently, by key), then:

- claims a ``pending`` job only when one of its create slots is free, and commits it
  ``submitting`` (owned by itself) in the same statement, with ``FOR UPDATE SKIP LOCKED``,
  *before* the create is sent: no job is created twice, fleet-wide. Just before the
  create's first byte, it confirms the claim (:meth:`PostgresLedger.reclaim`: still its
  own, now ``confirmed``);
- polls and downloads the tasks it created; a worker whose heartbeat (the fleet's
  ``aio88_processes`` row) is older than ``FLEET_BATCH_DEAD_LEASES`` of its leases, or
  that has no row (it left), is dead: a live worker takes over its ``submitted`` jobs,
  marks its confirmed ``submitting`` ones ``unconfirmed`` (their create may have reached
  the server) and puts the others back to ``pending`` (nothing of them was written). A
  live worker's jobs are never touched by another;
- writes each later step of a job only while it owns the job (``WHERE owner = $me``): a
  worker counted dead that comes back (a laptop that slept) finds the row changed, and
  leaves the job to its new owner (no download, no write);
- ends when nothing is left that it could do: no job pending, none being created, none
  being polled by another worker.

While the database is out of reach (a restart, a fail-over, the network), every statement
is tried again with backoff, each for up to ``FLEET_BATCH_PATIENCE`` seconds (and none
waits longer than ``FLEET_STATEMENT_TIMEOUT`` for an answer); then the worker stops with a
:class:`~aio88.fleet.FleetError`, its jobs left as they are (the others take them over
once it is dead). A statement whose answer was lost may have been committed: every write
stamps the rows it changes with a token of its own (``op``), so that its next try knows
them (a claim returns the job it took, a take-over the jobs it took, a state change counts
as made). Once the database is back, a worker takes nobody's jobs for two leases: the
others' heartbeats were failing too, and must have time to come back.

Implements :class:`aio88._ledger.SharedLedger`.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .._config import (
    DEFAULT_LEASE,
    FLEET_BATCH_DEAD_LEASES,
    FLEET_BATCH_PATIENCE,
    FLEET_CLOSE_TIMEOUT,
    FLEET_CONNECT_TIMEOUT,
    FLEET_STATEMENT_TIMEOUT,
)
from .._ledger import Job, JobState, edited_jobs
from .._retry import backoff_delay, half_jitter
from . import Fleet
from ._errors import DB_ERRORS, RECONNECT_BACKOFF, UNREACHABLE, FleetError
from ._outage import OutageLog

__all__ = ["BatchWorker", "PostgresLedger", "batch_status", "open_batch"]

log = logging.getLogger("aio88.fleet")
_T = TypeVar("_T")
#: The advisory lock taken while the batch table is created (workers start together).
_SCHEMA_LOCK = 0x6A10_88BA_7C40_0001

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aio88_batch_jobs (
    key text PRIMARY KEY,
    line integer NOT NULL,
    kind text NOT NULL,
    request text NOT NULL,
    state text NOT NULL,
    task_id text,
    error text,
    path text,
    size bigint,
    sha256 text,
    owner text,
    timed_out boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    sending_since double precision,
    sending_last double precision,
    op text,
    confirmed boolean NOT NULL DEFAULT false
);
ALTER TABLE aio88_batch_jobs ADD COLUMN IF NOT EXISTS op text;
ALTER TABLE aio88_batch_jobs ADD COLUMN IF NOT EXISTS confirmed boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS aio88_batch_jobs_state ON aio88_batch_jobs (state, line);
CREATE INDEX IF NOT EXISTS aio88_batch_jobs_task ON aio88_batch_jobs (task_id);
"""

# The statements below interpolate only these constants (never a value: those are bound
# parameters), hence their ``noqa: S608``.

#: The job's owner is a live worker: its heartbeat is within ``FLEET_BATCH_DEAD_LEASES``
#: of its leases. Not one lease: a heartbeat late for a moment (its database slow, its
#: loop stalled) must not hand its jobs to another worker.
_ALIVE = (
    "EXISTS (SELECT 1 FROM aio88_processes p WHERE p.id = {owner} "  # noqa: S608
    "AND p.heartbeat_at > now() - make_interval(secs => p.lease_seconds * "
    f"{FLEET_BATCH_DEAD_LEASES:d}))"
)

_COLUMNS = (
    "key, line, kind, request, state, task_id, error, path, size, sha256, sending_since, "
    "sending_last"
)


def _job(row: asyncpg.Record) -> Job:
    return Job(
        row["key"],
        row["line"],
        row["kind"],
        json.loads(row["request"]),
        row["state"],
        row["task_id"],
        row["error"],
        row["path"],
        row["size"],
        row["sha256"],
        row["sending_since"],
        row["sending_last"],
    )


def _token() -> str:
    """A write's own ``op`` stamp (see the module's text)."""
    return secrets.token_hex(8)


def _count(status: str) -> int:
    """The row count of a command's status (``UPDATE 3``, ``INSERT 0 3``)."""
    return int(status.split()[-1])


async def create_schema(connection: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> None:
    """Create the batch table if it is missing (under an advisory lock: two concurrent
    ``CREATE TABLE IF NOT EXISTS`` can still collide in the catalog)."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        await connection.execute(_SCHEMA)


class PostgresLedger:
    """The shared ledger of one batch (see the module's text).

    Args:
        pool: Connections to the batch's database.
        worker: This worker's id: its fleet process id.
        where: ``host:port`` of the database, for messages.
        fleet: The worker's fleet.
        lease: The worker's lease (seconds): others count it dead after
            ``FLEET_BATCH_DEAD_LEASES`` of them without a heartbeat.
        patience: Seconds one statement waits for the database while it is out of reach,
            before :class:`~aio88.fleet.FleetError`.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        worker: str,
        where: str,
        fleet: Fleet | None = None,
        lease: float = DEFAULT_LEASE,
        patience: float = FLEET_BATCH_PATIENCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.worker = worker
        self.where = f"postgresql {where}"
        self.fleet = fleet
        """The worker's fleet: its client's rate budget and task leases are the fleet's."""
        self._patience = patience
        self._clock = clock
        self._quiet_for = lease * FLEET_BATCH_DEAD_LEASES
        # The same database as the fleet's heartbeat, and named so in its lines.
        self._outage = OutageLog(
            log, retrying=f"for up to {patience:.0f} s (the batch's statements)"
        )
        self._back_at = -math.inf  # when the database last came back after failing
        self._gone: FleetError | None = None  # out of reach for too long: the worker stops
        self._waiting = True

    def stop_waiting(self) -> None:
        """From now on a statement the database does not answer fails at once, with
        :class:`~aio88.fleet.FleetError`, instead of waiting for it (the run is being
        interrupted: its jobs are left as a crash would leave them)."""
        self._waiting = False

    async def _patiently(self, statement: Callable[[int], Awaitable[_T]]) -> _T:
        """``statement(retry)`` (``retry`` 0, then 1, 2... after failures) until it gets
        through. While the database is out of reach, tried again with backoff; once this
        statement has waited ``patience`` seconds, :class:`~aio88.fleet.FleetError`, and
        every later call fails at once (the worker stops; its jobs stay as they are)."""
        retry = 0
        failing_since = None
        while True:
            if self._gone is not None:
                raise self._gone
            try:
                result = await statement(retry)
            except UNREACHABLE as exc:
                self._outage.failed(exc)
                now = self._clock()
                if failing_since is None:
                    failing_since = now
                if not self._waiting or now - failing_since >= self._patience:
                    waited = f"for {now - failing_since:.0f} s " if self._waiting else ""
                    self._gone = FleetError(
                        f"the batch's database ({self.where}) has been out of reach "
                        f"{waited}(the last failure: {type(exc).__name__}: {exc}); this "
                        "worker stops. Its jobs stay as they are; rerun it (or let the "
                        "other workers take them over) once the database is back"
                    )
                    raise self._gone from None
                await anyio.sleep(backoff_delay(retry, RECONNECT_BACKOFF, half_jitter))
                retry += 1
                continue
            if self._outage.down:
                self._back_at = self._clock()
            self._outage.ok()
            return result

    def _just_back(self) -> bool:
        """Whether the database came back less than two leases ago: every worker's
        heartbeat failed meanwhile, so none may be taken for dead yet."""
        return self._clock() - self._back_at < self._quiet_for

    # Statements that give the same whether tried once or again (reads, and writes whose
    # second try changes nothing more), tried until they get through.

    async def _execute(self, query: str, *args: object) -> str:
        return await self._patiently(lambda _retry: self._pool.execute(query, *args))

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        return await self._patiently(lambda _retry: self._pool.fetch(query, *args))

    async def _fetchval(self, query: str, *args: object) -> Any:
        return await self._patiently(lambda _retry: self._pool.fetchval(query, *args))

    async def prepare(self) -> None:
        """Create the table if need be; jobs a finished worker left behind (timed out, or
        their download failed) are put back to be polled by whoever takes them."""

        async def schema(_retry: int) -> None:
            async with self._pool.acquire() as connection:
                await create_schema(connection)

        await self._patiently(schema)
        await self._execute(
            "UPDATE aio88_batch_jobs j SET state = 'submitted', owner = NULL, "  # noqa: S608
            "timed_out = false, updated_at = now() "
            "WHERE (state = 'download_failed' OR (state = 'submitted' AND timed_out)) "
            f"AND NOT {_ALIVE.format(owner='j.owner')}"
        )

    # -- LedgerStore ------------------------------------------------------------------------

    async def add_new(self, jobs: list[Job]) -> int:
        """Record the jobs not yet known as ``pending`` (workers started together each
        import the same file: a key already there is left alone)."""
        status = await self._execute(
            "INSERT INTO aio88_batch_jobs (key, line, kind, request, state) "
            "SELECT k, l, d, r, 'pending' FROM unnest($1::text[], $2::int[], $3::text[], "
            "$4::text[]) WITH ORDINALITY AS t(k, l, d, r, n) ORDER BY n "
            "ON CONFLICT (key) DO NOTHING",
            [j.key for j in jobs],
            [j.line for j in jobs],
            [j.kind for j in jobs],
            [json.dumps(j.request) for j in jobs],
        )
        return _count(status)

    async def edited(self, jobs: list[Job]) -> list[tuple[Job, Job]]:
        """(job as the file has it, job as the ledger knows it) for every changed key."""
        return edited_jobs(jobs, await self.jobs())

    async def replace_request(self, job: Job) -> None:
        """Take a job's new request (only while it is ``pending``)."""
        await self._execute(
            "UPDATE aio88_batch_jobs SET request = $1, kind = $2, line = $3, updated_at = now() "
            "WHERE key = $4 AND state = 'pending'",
            json.dumps(job.request),
            job.kind,
            job.line,
            job.key,
        )

    async def jobs(self, *states: str) -> list[Job]:
        """The jobs in any of ``states`` (all when none given), in file order."""
        wanted = [JobState(state).value for state in states]
        query = f"SELECT {_COLUMNS} FROM aio88_batch_jobs"  # noqa: S608
        if wanted:
            rows = await self._fetch(query + " WHERE state = ANY($1::text[]) ORDER BY line", wanted)
        else:
            rows = await self._fetch(query + " ORDER BY line")
        return [_job(row) for row in rows]

    async def set_state(
        self,
        key: str,
        state: JobState | str,
        *,
        task_id: str | None = None,
        error: str | None = None,
        path: str | None = None,
        size: int | None = None,
        sha256: str | None = None,
        was: str | None = None,
    ) -> bool:
        """Move a job to ``state`` (as the SQLite ledger does), see
        :meth:`aio88._ledger.LedgerStore.set_state`: without ``was``, only while this
        worker owns it; with ``was``, only from that state, and it then belongs to nobody
        (the next :meth:`take_over` takes a ``submitted`` one). A job put back to
        ``pending`` belongs to nobody."""
        state = JobState(state)
        sending = time.time() if state is JobState.SUBMITTING else None
        if was is None:
            # A step of the job's worker: the row count says whether it still owns it.
            guard, check = "owner = $9", self.worker
            keep = "owner = CASE WHEN $2 = 'pending' THEN NULL ELSE owner END"
        else:
            # A change to a job nobody works on: to nobody (and taken over, if submitted).
            # Only if nobody changed it since it was read here (its stamp): a try again
            # after a lost answer must not undo what another worker did meanwhile, even
            # if that left the job in ``was`` again.
            seen = await self._fetchval("SELECT op FROM aio88_batch_jobs WHERE key = $1", key)
            guard, check = "state = $9 AND op IS NOT DISTINCT FROM $11", JobState(was).value
            keep = "owner = NULL, timed_out = false"
        op = _token()
        values: list[object] = [key, state.value, task_id, error, path, size, sha256, sending]
        values += [check, op] if was is None else [check, op, seen]

        async def update(retry: int) -> str:
            # A try again after a lost answer: the first may have made the change (the
            # row then bears its stamp, unless another worker changed it since).
            where = f"({guard} OR op = $10)" if retry else guard
            return await self._pool.execute(
                "UPDATE aio88_batch_jobs SET state = $2, task_id = COALESCE($3, task_id), "  # noqa: S608
                "error = $4, path = COALESCE($5, path), size = COALESCE($6, size), "
                "sha256 = COALESCE($7, sha256), updated_at = now(), "
                "sending_since = COALESCE(sending_since, $8), "
                f"sending_last = COALESCE($8, sending_last), op = $10, {keep} "
                f"WHERE key = $1 AND {where}",
                *values,
            )

        return _count(await self._patiently(update)) == 1

    async def task_ids(self) -> set[str]:
        """Every task id the batch knows."""
        rows = await self._fetch("SELECT task_id FROM aio88_batch_jobs WHERE task_id IS NOT NULL")
        return {str(row[0]) for row in rows}

    async def key_of_task(self, task_id: str) -> str | None:
        """The job that created ``task_id``."""
        key = await self._fetchval("SELECT key FROM aio88_batch_jobs WHERE task_id = $1", task_id)
        return None if key is None else str(key)

    async def counts(self) -> Counter[str]:
        """How many jobs of the batch are in each state."""
        rows = await self._fetch("SELECT state, count(*) FROM aio88_batch_jobs GROUP BY state")
        return Counter({str(row[0]): int(row[1]) for row in rows})

    async def close(self) -> None:
        """Nothing to do: the pool is closed by :func:`open_batch`."""

    # -- SharedLedger -----------------------------------------------------------------------

    async def claim(self, skip: set[str]) -> Job | None:
        """A ``pending`` job, committed ``submitting`` and owned by this worker."""
        op = _token()

        async def take(retry: int) -> asyncpg.Record | None:
            if retry:
                # The last try may have claimed a job, its answer lost: that job bears
                # this claim's stamp (and is this worker's, to create now).
                row: asyncpg.Record | None = await self._pool.fetchrow(
                    f"SELECT {_COLUMNS} FROM aio88_batch_jobs WHERE op = $1 AND owner = $2",  # noqa: S608
                    op,
                    self.worker,
                )
                if row is not None:
                    return row
            # Not ``confirmed``: its create is not about to be written yet (reclaim, just
            # before the first byte, confirms it), so it has no send time either.
            return await self._pool.fetchrow(
                "UPDATE aio88_batch_jobs SET state = 'submitting', owner = $1, error = NULL, "  # noqa: S608
                "updated_at = now(), confirmed = false, op = $3 "
                "WHERE key = (SELECT key FROM aio88_batch_jobs WHERE state = 'pending' "
                "AND NOT (key = ANY($2::text[])) ORDER BY line LIMIT 1 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {_COLUMNS}",
                self.worker,
                sorted(skip),
                op,
            )

        row = await self._patiently(take)
        return None if row is None else _job(row)

    async def reclaim(self, key: str) -> bool:
        """``key`` ``submitting`` for the try about to be written, if nobody took it
        meanwhile (see :meth:`aio88._ledger.SharedLedger.reclaim`)."""
        status = await self._execute(
            "UPDATE aio88_batch_jobs SET state = 'submitting', owner = $1, error = NULL, "
            "updated_at = now(), sending_since = COALESCE(sending_since, $3), "
            "sending_last = $3, confirmed = true WHERE key = $2 AND (state = 'pending' "
            "OR (state = 'submitting' AND owner = $1))",
            self.worker,
            key,
            time.time(),
        )
        return _count(status) == 1

    async def take_over(self) -> list[Job]:
        """Dead (or no) workers' ``submitted`` jobs, now this worker's to poll (none while
        the database is just back, see :meth:`_just_back`)."""
        if self._just_back():
            return []
        op = _token()

        async def take(retry: int) -> list[asyncpg.Record]:
            # A try again after a lost answer: the jobs the first took bear its stamp.
            also = "OR j.op = $2" if retry else ""
            return await self._pool.fetch(
                "UPDATE aio88_batch_jobs SET owner = $1, updated_at = now(), op = $2 "  # noqa: S608
                "WHERE key IN (SELECT key FROM aio88_batch_jobs j WHERE (state = 'submitted' "
                "AND NOT timed_out AND (owner IS NULL OR (owner <> $1 AND NOT "
                f"{_ALIVE.format(owner='j.owner')}))) {also} FOR UPDATE SKIP LOCKED) "
                f"RETURNING {_COLUMNS}",
                self.worker,
                op,
            )

        rows = await self._patiently(take)
        return sorted((_job(row) for row in rows), key=lambda job: job.line)

    async def bury(self) -> int:
        """Dead workers' creates in flight become ``unconfirmed`` (and nobody's: should
        the worker come back with its answer, it finds the job no longer its own); their
        claims never confirmed go back to ``pending`` (no byte of those creates was
        written, and none will be: a worker that comes back confirms before writing, and
        finds the job gone). Returns how many became ``unconfirmed``. None while the
        database is just back (see :meth:`_just_back`)."""
        if self._just_back():
            return 0
        rows = await self._fetch(
            "UPDATE aio88_batch_jobs j SET updated_at = now(), owner = NULL, "  # noqa: S608
            "state = CASE WHEN confirmed THEN 'unconfirmed' ELSE 'pending' END, "
            "error = CASE WHEN confirmed THEN 'its worker (' || coalesce(owner, '?') || ') "
            "was silent for over " + str(FLEET_BATCH_DEAD_LEASES) + " leases while the "
            "create was in flight: it may have reached the server' END "
            "WHERE state = 'submitting' AND (owner IS NULL OR (owner <> $1 AND NOT "
            f"{_ALIVE.format(owner='j.owner')})) RETURNING state",
            self.worker,
        )
        return sum(row["state"] == "unconfirmed" for row in rows)

    async def timed_out(self, key: str) -> None:
        """Nobody takes ``key`` over in this batch run (a later worker polls it again)."""
        await self._execute(
            "UPDATE aio88_batch_jobs SET timed_out = true WHERE key = $1 AND owner = $2",
            key,
            self.worker,
        )

    async def holds(self, key: str) -> bool:
        """Whether this worker still owns ``key``'s ``submitted`` job."""
        found = await self._fetchval(
            "SELECT 1 FROM aio88_batch_jobs WHERE key = $1 AND owner = $2 AND state = 'submitted'",
            key,
            self.worker,
        )
        return found is not None

    async def open_elsewhere(self, skip: set[str]) -> int:
        """Jobs that may still need this worker (see the protocol)."""
        found = await self._fetchval(
            "SELECT count(*) FROM aio88_batch_jobs WHERE "
            "(state = 'pending' AND NOT (key = ANY($2::text[]))) OR state = 'submitting' "
            "OR (state = 'submitted' AND NOT timed_out AND owner IS DISTINCT FROM $1)",
            self.worker,
            sorted(skip),
        )
        return int(found)


@asynccontextmanager
async def open_batch(dsn: str, *, lease: float) -> AsyncIterator[PostgresLedger]:
    """This worker's seat in the batch: a :class:`~aio88.fleet.Fleet` (its process row and
    heartbeat tell the others it lives) and the shared ledger.

    Raises:
        FleetError: The database cannot be reached or used.
    """
    async with Fleet(dsn, lease=lease) as fleet:
        # Its own pool: the fleet's connections are its own business. A few connections
        # for creates' claims, the tending loop and the results. min_size=0, as the
        # fleet's: no floor for asyncpg to restore (with a traceback a second) while the
        # database is out of reach. command_timeout: a network that drops packets makes a
        # statement fail (and be tried again), not hang for the kernel's TCP timeout.
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=4,
            timeout=FLEET_CONNECT_TIMEOUT,
            command_timeout=FLEET_STATEMENT_TIMEOUT,
        )
        try:
            ledger = PostgresLedger(
                pool, worker=fleet.process_id, where=fleet.where, fleet=fleet, lease=lease
            )
            await ledger.prepare()
            yield ledger
        finally:
            try:
                with anyio.fail_after(FLEET_CLOSE_TIMEOUT):
                    await pool.close()
            except (*DB_ERRORS, TimeoutError):
                pool.terminate()  # the database out of reach: cut, not waited for


@dataclass(frozen=True)
class BatchWorker:
    """A worker that holds jobs of the batch, as ``--status`` shows it."""

    id: str
    alive: bool
    """Its heartbeat is within ``FLEET_BATCH_DEAD_LEASES`` of its leases (else the others
    take its jobs over)."""
    holds: dict[str, int]
    """How many jobs it holds in each state (``submitting``: creates in flight;
    ``submitted``: tasks it polls and downloads)."""


async def batch_status(dsn: str) -> tuple[list[Job], list[BatchWorker]] | None:
    """Every job of the batch, and the workers holding ``submitting`` or ``submitted``
    ones (``None``: the database has no batch). Reads only: no process row is made."""
    connection = await asyncpg.connect(dsn, timeout=FLEET_CONNECT_TIMEOUT)
    try:
        exists = await connection.fetchval("SELECT to_regclass('aio88_batch_jobs') IS NOT NULL")
        if not exists:
            return None
        rows = await connection.fetch(f"SELECT {_COLUMNS} FROM aio88_batch_jobs ORDER BY line")  # noqa: S608
        has_processes = await connection.fetchval(
            "SELECT to_regclass('aio88_processes') IS NOT NULL"
        )
        alive = _ALIVE.format(owner="j.owner") if has_processes else "false"
        held = await connection.fetch(
            f"SELECT owner, state, count(*) AS n, bool_or({alive}) AS alive "  # noqa: S608
            "FROM aio88_batch_jobs j WHERE owner IS NOT NULL "
            "AND state IN ('submitting', 'submitted') AND NOT timed_out "
            "GROUP BY owner, state ORDER BY owner, state"
        )
    finally:
        await connection.close()
    workers: dict[str, BatchWorker] = {}
    for row in held:
        worker = workers.setdefault(row["owner"], BatchWorker(row["owner"], row["alive"], {}))
        worker.holds[row["state"]] = int(row["n"])
    return [_job(row) for row in rows], list(workers.values())
