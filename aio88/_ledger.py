"""The batch ledger of ``aio88 run``: one SQLite file that survives a crash.

Every job moves through these states, each committed before the next step is taken:

``pending`` -> ``submitting`` -> ``submitted`` -> ``downloaded``
                        \\-> ``unconfirmed`` (the create may have reached the server)
                        \\-> ``rejected`` (the server refused it: nothing billed)
                                 ``submitted`` -> ``failed`` (the task failed)

A job is recorded as ``submitting`` and committed *before* its create is sent, and its task
id is committed the moment the create returns. So after a crash a job is either known to
the server by its id, or was never sent, or is ``unconfirmed``: the one case that cannot
be settled without risking a second bill, and which is only resent when asked.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._models import Kind

__all__ = ["Job", "Ledger"]


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
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_task ON jobs (task_id);
"""


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


class Ledger:
    """The jobs of one output folder, in ``<folder>/ledger.sqlite3``."""

    FILE_NAME = "ledger.sqlite3"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.FILE_NAME
        # isolation_level=None: every statement commits at once (autocommit); each state
        # change is durable when the call returns, which is the whole point.
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

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

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def jobs(self, *states: str) -> Iterator[Job]:
        """The jobs in any of ``states`` (all jobs when none given), in file order."""
        query = "SELECT key, line, kind, request, state, task_id, error, path FROM jobs"
        params: tuple[str, ...] = ()
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
            params = states
        for key, line, kind, request, state, task_id, error, path in self._db.execute(
            query + " ORDER BY line", params
        ):
            # The kind column holds only what load_jobs validated: "generation" or "video".
            yield Job(key, line, kind, json.loads(request), state, task_id, error, path)

    def set_state(
        self,
        key: str,
        state: str,
        *,
        task_id: str | None = None,
        error: str | None = None,
        path: str | None = None,
    ) -> None:
        """Move a job to ``state`` (committed when this returns)."""
        self._db.execute(
            "UPDATE jobs SET state = ?, task_id = COALESCE(?, task_id), error = ?, "
            "path = COALESCE(?, path), updated_at = ? WHERE key = ?",
            (state, task_id, error, path, time.time(), key),
        )

    def key_of_task(self, task_id: str) -> str | None:
        """The job that created ``task_id``."""
        row = self._db.execute("SELECT key FROM jobs WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else str(row[0])

    def counts(self) -> Counter[str]:
        """How many jobs are in each state."""
        return Counter(dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")))
