"""The batch ledger of ``aio88 run``: one SQLite file that survives a crash.

Every job moves through these states, each committed before the next step is taken:

``pending`` -> ``submitting`` -> ``submitted`` -> ``downloaded``
                        \\-> ``unconfirmed`` (the create may have reached the server)
                        \\-> ``rejected`` (the server refused it: nothing billed)
                                 ``submitted`` -> ``failed`` (the task failed)
                                 ``submitted`` stays, shown ``timed out``, when the task was
                                 still running at ``--timeout``: a rerun polls it again

A job is recorded as ``submitting`` and committed *before* its create is sent, and its task
id is committed the moment the create returns. So after a crash a job is either known to
the server by its id, or was never sent, or is ``unconfirmed``: the one case that cannot
be settled without risking a second bill, and which is only resent when asked.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from ._models import Kind

__all__ = [
    "Job",
    "JobState",
    "Ledger",
    "LedgerBusyError",
    "LedgerStore",
    "SharedLedger",
    "SqliteStore",
    "edited_jobs",
]


class JobState(str, Enum):  # StrEnum needs Python 3.11; aio88 runs on 3.10
    """Where a job stands (the diagram above). A ``str``: the ledger stores its value."""

    PENDING = "pending"
    """Not created; safe to send (again)."""
    SUBMITTING = "submitting"
    """Its create is being sent: committed before the first byte."""
    SUBMITTED = "submitted"
    """Created: its task id is known; polled until it finishes."""
    DOWNLOADED = "downloaded"
    """Its video is saved, size and SHA-256 recorded."""
    DOWNLOAD_FAILED = "download_failed"
    """The task succeeded, the download did not (a rerun fetches it again)."""
    FAILED = "failed"
    """The server said the task failed."""
    REJECTED = "rejected"
    """The API refused the create (nothing billed)."""
    UNCONFIRMED = "unconfirmed"
    """The create was sent and its answer lost: it may exist and be billed."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key        TEXT PRIMARY KEY,
    line       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    request    TEXT NOT NULL,
    state      TEXT NOT NULL,
    task_id    TEXT,
    error      TEXT,
    path       TEXT,
    size       INTEGER,
    sha256     TEXT,
    updated_at REAL NOT NULL,
    sending_since REAL,
    sending_last  REAL
);
CREATE INDEX IF NOT EXISTS jobs_task ON jobs (task_id);
"""


def _take_lock(path: Path) -> int:
    """Hold an exclusive flock on ``path`` (writing our pid in it), or say who holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LedgerBusyError(
            f"another aio88 run (pid {holder}) is using {path.parent}; wait for it to end, "
            "or give this run another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass(frozen=True)
class Job:
    """One line of the jobs file, as the ledger knows it."""

    key: str
    line: int
    kind: Kind
    request: dict[str, Any]
    state: str = "pending"
    task_id: str | None = None
    error: str | None = None
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    sending_since: float | None = None
    """Unix time its create was first about to be written (``None``: never, or a ledger
    written by an aio88 that kept no such time)."""
    sending_last: float | None = None
    """Unix time its create was last about to be written (each try, each resend)."""


def edited_jobs(jobs: Iterable[Job], known: Iterable[Job]) -> list[tuple[Job, Job]]:
    """(job as the file has it now, job as a ledger knows it) for every key of ``jobs``
    whose request or kind differs in ``known`` (every ledger judges edits this way)."""
    by_key = {job.key: job for job in known}
    return [
        (job, old)
        for job in jobs
        if (old := by_key.get(job.key)) is not None
        and (old.request, old.kind) != (job.request, job.kind)
    ]


class LedgerBusyError(Exception):
    """Another ``aio88 run`` holds this ledger (its message names the folder and pid)."""


class Ledger:
    """The jobs of one output folder, in ``<folder>/ledger.sqlite3``.

    One run at a time: opening it for a run takes an exclusive advisory lock (``flock``) on
    ``<folder>/ledger.lock``, held until :meth:`close` or the process's end (a crash
    included: the kernel releases it), so two runs on one folder cannot create a job twice.
    The lock belongs to this SQLite ledger, not to the folder: a shared (PostgreSQL) ledger
    coordinates its workers otherwise.

    Args:
        folder: The run's output folder.
        lock: Take the run lock (``--status``, which only reads, does not).

    Raises:
        LedgerBusyError: Another run holds the lock.
    """

    FILE_NAME = "ledger.sqlite3"
    LOCK_NAME = "ledger.lock"

    def __init__(self, folder: Path, *, lock: bool = True) -> None:
        self.path = folder / self.FILE_NAME
        self._lock_fd = _take_lock(folder / self.LOCK_NAME) if lock else None
        # isolation_level=None: every statement commits at once (autocommit); each state
        # change is durable when the call returns, which is the whole point.
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, kind in (
            ("size", "INTEGER"),
            ("sha256", "TEXT"),
            ("sending_since", "REAL"),
            ("sending_last", "REAL"),
        ):
            if column not in columns:  # a ledger written by an earlier aio88
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def close(self) -> None:
        """Close the database and let the next run in."""
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def add_new(self, jobs: list[Job]) -> int:
        """Record the jobs not yet in the ledger as ``pending``; return how many were new."""
        before = self._count()
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO jobs (key, line, kind, request, state, updated_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?)",
                [(j.key, j.line, j.kind, json.dumps(j.request), time.time()) for j in jobs],
            )
        return self._count() - before

    def edited(self, jobs: list[Job]) -> list[tuple[Job, Job]]:
        """(job as the file has it now, job as the ledger knows it) for every key whose
        request changed."""
        return edited_jobs(jobs, self.jobs())

    def replace_request(self, job: Job) -> None:
        """Take a job's new request (only for a job not sent yet)."""
        self._db.execute(
            "UPDATE jobs SET request = ?, kind = ?, line = ?, updated_at = ? "
            "WHERE key = ? AND state = 'pending'",
            (json.dumps(job.request), job.kind, job.line, time.time(), job.key),
        )

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def jobs(self, *states: str) -> Iterator[Job]:
        """The jobs in any of ``states`` (all jobs when none given), in file order.

        Raises:
            ValueError: A state that does not exist (a typo would silently find nothing).
        """
        states = tuple(JobState(state).value for state in states)
        query = (
            "SELECT key, line, kind, request, state, task_id, error, path, size, sha256, "
            "sending_since, sending_last FROM jobs"
        )
        params: tuple[str, ...] = ()
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
            params = states
        for row in self._db.execute(query + " ORDER BY line", params):
            key, line, kind, request, state, task_id, error, path, size, sha, since, last = row
            # The kind column holds only what load_jobs validated: "generation" or "video".
            yield Job(
                key,
                line,
                kind,
                json.loads(request),
                state,
                task_id,
                error,
                path,
                size,
                sha,
                since,
                last,
            )

    def set_state(
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
        """Move a job to ``state`` (committed when this returns); a downloaded job's file
        is recorded with its size and SHA-256, to be checked later. With ``was``, only a
        job still in that state moves. Returns whether the job moved.

        A move to ``submitting`` also records when: the first such time is kept, and the
        last; together they bound when a task its create made can have been stored
        (``aio88 run --reconcile`` looks for it in that window).
        """
        state = JobState(state)  # a misspelt state fails here, not in a later run's query
        now = time.time()
        sending = now if state is JobState.SUBMITTING else None
        query = (
            "UPDATE jobs SET state = ?, task_id = COALESCE(?, task_id), error = ?, "
            "path = COALESCE(?, path), size = COALESCE(?, size), "
            "sha256 = COALESCE(?, sha256), updated_at = ?, "
            "sending_since = COALESCE(sending_since, ?), "
            "sending_last = COALESCE(?, sending_last) WHERE key = ?"
        )
        params: tuple[Any, ...] = (
            state.value,
            task_id,
            error,
            path,
            size,
            sha256,
            now,
            sending,
            sending,
            key,
        )
        if was is not None:
            query += " AND state = ?"
            params += (JobState(was).value,)
        return self._db.execute(query, params).rowcount == 1

    def task_ids(self) -> set[str]:
        """Every task id the ledger knows (each belongs to one job)."""
        rows = self._db.execute("SELECT task_id FROM jobs WHERE task_id IS NOT NULL")
        return {str(row[0]) for row in rows}

    def key_of_task(self, task_id: str) -> str | None:
        """The job that created ``task_id``."""
        row = self._db.execute("SELECT key FROM jobs WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else str(row[0])

    def counts(self) -> Counter[str]:
        """How many jobs are in each state."""
        return Counter(dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")))


class LedgerStore(Protocol):
    """What ``aio88 run`` asks of its ledger, whichever keeps it: the SQLite :class:`Ledger`
    of one run (through :class:`SqliteStore`) or a fleet's PostgreSQL batch, shared by
    workers on several machines (``aio88.fleet``). Async, because the shared one talks to
    a server; each call's change is committed when it returns."""

    where: str
    """Where the ledger lives, for messages (a file's path, or a database's host:port)."""

    async def add_new(self, jobs: list[Job]) -> int:
        """Record the jobs not yet known (by key) as ``pending``; return how many."""
        ...

    async def edited(self, jobs: list[Job]) -> list[tuple[Job, Job]]:
        """(job as the file has it, job as the ledger knows it) for every changed key."""
        ...

    async def replace_request(self, job: Job) -> None:
        """Take a job's new request (only for a job not sent yet)."""
        ...

    async def jobs(self, *states: str) -> list[Job]:
        """The jobs in any of ``states`` (all when none given), in file order."""
        ...

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
        """Move a job to ``state`` (see :meth:`Ledger.set_state`); ``False``: it did not
        move.

        Without ``was``: a step of the worker that holds the job (its create's result,
        its task's outcome). A shared ledger moves it only while this worker still owns
        it; ``False`` means another worker took it over, and this one must leave it
        alone. With ``was``: a change to a job nobody works on now (an ``unconfirmed``
        one settled, a ``downloaded`` one whose file is gone), made only if the job is
        still in state ``was``; a shared ledger then leaves it to no owner.
        """
        ...

    async def task_ids(self) -> set[str]:
        """Every task id the ledger knows."""
        ...

    async def key_of_task(self, task_id: str) -> str | None:
        """The job that created ``task_id``."""
        ...

    async def counts(self) -> Counter[str]:
        """How many jobs are in each state."""
        ...

    async def close(self) -> None:
        """Let go of the ledger (and, for SQLite, of the run lock)."""
        ...


class SharedLedger(LedgerStore, Protocol):
    """A ledger several live workers share: each job is claimed before anyone acts on it.

    A worker claims a ``pending`` job and commits it ``submitting`` (owned by itself) in
    one statement, *before* its create is sent, and only when a create slot is free: so a
    worker never holds more ``submitting`` jobs than creates in flight; just before the
    create's first byte it confirms the claim (:meth:`reclaim`). Its task is then
    polled and downloaded by the same worker, or, once that worker is dead (no heartbeat
    within ``FLEET_BATCH_DEAD_LEASES`` of its leases), by the live one that takes it over.
    Every later step of a job is written only while its worker still owns it
    (:meth:`set_state`): a worker counted dead that comes back (a machine that slept)
    finds its jobs gone and leaves them alone.
    """

    worker: str
    """This worker's id (its fleet process id: ``host:pid:random``)."""

    async def claim(self, skip: set[str]) -> Job | None:
        """A ``pending`` job (not among ``skip``), now ``submitting`` and owned by this
        worker; ``None`` when there is none to take now."""
        ...

    async def reclaim(self, key: str) -> bool:
        """Commit ``key`` ``submitting`` (again) just before its create is written: if it is
        ``pending`` (put back when a try provably sent nothing) or still ``submitting`` and
        this worker's (its claim holds); ``False``: another worker took it meanwhile (or
        took this one for dead and made it ``unconfirmed``), and the create must not be
        sent."""
        ...

    async def take_over(self) -> list[Job]:
        """The ``submitted`` jobs of dead workers (and of none), now owned by this worker
        to poll and download (a job left by a ``--timeout`` is not taken)."""
        ...

    def stop_waiting(self) -> None:
        """The run is being interrupted: from now on a statement the database does not
        answer fails at once instead of being waited for."""
        ...

    async def bury(self) -> int:
        """Dead workers' ``submitting`` jobs become ``unconfirmed`` if their claim was
        confirmed before a write (their create may have reached the server), else
        ``pending`` again (nothing of it was written, and its worker confirms before it
        writes); return how many became ``unconfirmed``."""
        ...

    async def timed_out(self, key: str) -> None:
        """This worker gave up waiting for ``key``'s task (``--timeout``): no other worker
        takes it over in this batch run; a worker started later polls it again (only
        while this worker owns it)."""
        ...

    async def holds(self, key: str) -> bool:
        """Whether this worker still owns ``key``'s ``submitted`` job (asked before its
        video is downloaded: a job taken over is fetched by its new owner only)."""
        ...

    async def open_elsewhere(self, skip: set[str]) -> int:
        """How many jobs may still need this worker: ``pending`` ones (not among
        ``skip``), ``submitting`` ones, and ``submitted`` ones owned by another worker
        (live, or dead and not yet taken over). Zero: this worker's part is over."""
        ...


class SqliteStore:
    """:class:`LedgerStore` over the SQLite :class:`Ledger` (its calls are quick, local
    and synchronous: each runs in place, as the run loop always called them)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.where = str(ledger.path)

    async def add_new(self, jobs: list[Job]) -> int:
        """See :meth:`Ledger.add_new`."""
        return self.ledger.add_new(jobs)

    async def edited(self, jobs: list[Job]) -> list[tuple[Job, Job]]:
        """See :meth:`Ledger.edited`."""
        return self.ledger.edited(jobs)

    async def replace_request(self, job: Job) -> None:
        """See :meth:`Ledger.replace_request`."""
        self.ledger.replace_request(job)

    async def jobs(self, *states: str) -> list[Job]:
        """See :meth:`Ledger.jobs`."""
        return list(self.ledger.jobs(*states))

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
        """See :meth:`Ledger.set_state` (one run: the job is always its own)."""
        return self.ledger.set_state(
            key, state, task_id=task_id, error=error, path=path, size=size, sha256=sha256, was=was
        )

    async def task_ids(self) -> set[str]:
        """See :meth:`Ledger.task_ids`."""
        return self.ledger.task_ids()

    async def key_of_task(self, task_id: str) -> str | None:
        """See :meth:`Ledger.key_of_task`."""
        return self.ledger.key_of_task(task_id)

    async def counts(self) -> Counter[str]:
        """See :meth:`Ledger.counts`."""
        return self.ledger.counts()

    async def close(self) -> None:
        """See :meth:`Ledger.close`."""
        self.ledger.close()
