"""The shared batch ledger (``aio88 run --ledger``) when its database fails: a real
PostgreSQL (``postgres_dsn``), the emulator, real ``aio88`` processes where it matters.

What must hold: an outage of several seconds in the middle of a run is waited out (every
job created once and downloaded, exit 0, a few log lines and no traceback); an outage
longer than the worker's patience stops it with one clear error naming the database (and
every later statement fails at once); a statement whose answer is lost after its commit
gives, tried again, what the first try would have: a claim puts back the job it took, a
take-over returns the jobs it took, a state change reports success.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from commands import AIO88, emulator_env, json_events, write_jobs

from aio88.testing import Emulator

asyncpg = pytest.importorskip("asyncpg", reason="needs asyncpg (the aio88[postgres] extra)")
from aio88._ledger import Job  # noqa: E402
from aio88.fleet import FleetError  # noqa: E402 - needs asyncpg
from aio88.fleet._batch import PostgresLedger, open_batch  # noqa: E402

_DEAD = "gone-host:1:dead"  # a worker id with no process row: dead


@asynccontextmanager
async def _closed(dsn: str) -> AsyncIterator[None]:
    """The database refuses connections, and its sessions are cut, for the block."""
    base, name = dsn.rsplit("/", 1)
    admin = await asyncpg.connect(f"{base}/postgres")  # not from the database it closes
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def _rows(dsn: str, query: str, *args: object) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await connection.fetch(query, *args)]
    finally:
        await connection.close()


class _LosingPool:
    """A real pool whose next ``lose`` statement of a kind runs (and commits), then
    raises as if the connection had dropped before its answer came."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.lose: str | None = None  # "execute", "fetch" or "fetchrow"

    def acquire(self) -> Any:
        return self._pool.acquire()

    def _call(self, kind: str) -> Callable[..., Awaitable[Any]]:
        async def call(query: str, *args: object) -> Any:
            result = await getattr(self._pool, kind)(query, *args)
            if self.lose == kind:
                self.lose = None
                raise asyncpg.exceptions.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation (the test lost it)"
                )
            return result

        return call

    def __getattr__(self, kind: str) -> Callable[..., Awaitable[Any]]:
        return self._call(kind)


@asynccontextmanager
async def _losing_ledger(dsn: str) -> AsyncIterator[tuple[PostgresLedger, _LosingPool]]:
    """A worker's ledger (its fleet row alive) whose statements' answers a test can lose."""
    async with open_batch(dsn, lease=5) as seat:
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
        try:
            losing = _LosingPool(pool)
            ledger = PostgresLedger(cast(Any, losing), worker=seat.worker, where="test")
            yield ledger, losing
        finally:
            await pool.close()


def _jobs(n: int) -> list[Job]:
    return [
        Job(key=f"job-{i}", line=i + 1, kind="video", request={"prompt": f"fox {i}"})
        for i in range(n)
    ]


async def test_a_claim_whose_answer_was_lost_puts_its_job_back(postgres_dsn: str) -> None:
    async with _losing_ledger(postgres_dsn) as (ledger, losing):
        await ledger.add_new(_jobs(3))
        first = await ledger.claim(set())
        assert first is not None and first.key == "job-0"
        losing.lose = "fetchrow"  # job-1 is claimed, and this worker never hears of it
        second = await ledger.claim({first.key})
        assert second is not None
        states = dict(await _rows(postgres_dsn, "SELECT key, state FROM aio88_batch_jobs"))
        # job-0 (its create on its way) kept; the lost claim's job back for anyone; the
        # try again took the first pending job (job-1 once more).
        assert states == {"job-0": "submitting", "job-1": "submitting", "job-2": "pending"}
        assert second.key == "job-1"
        owned = await _rows(
            postgres_dsn, "SELECT count(*) FROM aio88_batch_jobs WHERE owner = $1", ledger.worker
        )
        assert owned == [(2,)]  # no claim of this worker's that none of its creates holds


async def test_a_take_over_whose_answer_was_lost_still_returns_the_jobs(
    postgres_dsn: str,
) -> None:
    async with _losing_ledger(postgres_dsn) as (ledger, losing):
        await ledger.add_new(_jobs(3))
        await _rows(
            postgres_dsn,
            "UPDATE aio88_batch_jobs SET state = 'submitted', owner = $1, task_id = 't-' || key",
            _DEAD,
        )
        await _rows(
            postgres_dsn,
            "UPDATE aio88_batch_jobs SET owner = $1 WHERE key = 'job-2'",
            ledger.worker,
        )
        losing.lose = "fetch"  # the dead worker's two jobs become ours; the answer is lost
        taken = await ledger.take_over({"job-2"})
        assert [job.key for job in taken] == ["job-0", "job-1"]
        assert await ledger.take_over({"job-0", "job-1", "job-2"}) == []


@pytest.mark.parametrize(("state", "was"), [("pending", "unconfirmed"), ("pending", None)])
async def test_a_state_change_whose_answer_was_lost_is_a_success(
    postgres_dsn: str, state: str, was: str | None
) -> None:
    async with _losing_ledger(postgres_dsn) as (ledger, losing):
        await ledger.add_new(_jobs(1))
        start = "unconfirmed" if was else "submitting"
        owner = None if was else ledger.worker
        await _rows(
            postgres_dsn, "UPDATE aio88_batch_jobs SET state = $1, owner = $2", start, owner
        )
        losing.lose = "execute"
        assert await ledger.set_state("job-0", state, was=was)
        assert await _rows(postgres_dsn, "SELECT state, owner FROM aio88_batch_jobs") == [
            (state, None)
        ]


async def test_an_outage_longer_than_the_patience_stops_the_worker(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_batch(postgres_dsn, lease=5) as seat:
        pool = await asyncpg.create_pool(postgres_dsn, min_size=0, max_size=2)
        try:
            ledger = PostgresLedger(pool, worker=seat.worker, where="127.0.0.1:5", patience=1.0)
            await ledger.add_new(_jobs(2))
            with caplog.at_level(logging.WARNING, logger="aio88.fleet"):
                async with _closed(postgres_dsn):
                    with pytest.raises(FleetError) as raised:
                        await ledger.counts()
                    message = str(raised.value)
                    assert "postgresql 127.0.0.1:5" in message and "out of reach" in message
                    assert "not currently accepting connections" in message
                # Back now, but the worker has stopped: every statement fails at once.
                with anyio.fail_after(1), pytest.raises(FleetError):
                    await ledger.claim(set())
            lines = [r.getMessage() for r in caplog.records if r.name == "aio88.fleet"]
            assert any("retrying for up to 1 s" in line for line in lines)
        finally:
            await pool.close()
    assert await _rows(postgres_dsn, "SELECT count(*) FROM aio88_batch_jobs") == [(2,)]


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_database_outage_mid_run_is_waited_out(tmp_path: Path, postgres_dsn: str) -> None:
    """The database refuses connections for a few seconds while a worker creates, polls
    and downloads: it waits, then goes on; every job is created once and downloaded."""
    total = 12
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", total), tmp_path / "out"
    async with Emulator(duration=(1.0, 2.0)) as emu:
        emu.faults.latency = 0.15  # creates one after another for about 2 s
        argv = ["run", str(jobs), "--out", str(out), "--ledger", postgres_dsn, "--lease", "2"]
        stdout_path, stderr_path = tmp_path / "stdout.jsonl", tmp_path / "stderr.txt"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            worker = await anyio.open_process(
                [*AIO88, *argv, "--create-concurrency", "1", "--json"],
                env=emulator_env(emu),
                stdout=stdout,
                stderr=stderr,
            )
        try:
            with anyio.fail_after(30):
                while emu.creates < 3:  # noqa: ASYNC110 - the emulator's count, no event
                    await anyio.sleep(0.02)
            async with _closed(postgres_dsn):
                await anyio.sleep(5.0)
            with anyio.fail_after(60):
                code = await worker.wait()
        finally:
            if worker.returncode is None:
                worker.kill()
            await worker.aclose()
        errors = stderr_path.read_text()
        assert code == 0, errors
        assert "Traceback" not in errors
        assert "retrying for up to" in errors and "is back" in errors
        created = Counter(task.prompt for task in emu.tasks.values())
    assert created == Counter(f"fox {i}" for i in range(total))
    done = [e for e in json_events(stdout_path.read_text()) if e["event"] == "done"]
    assert len(done) == total
    assert len(list((out / "videos").iterdir())) == total
    states = await _rows(postgres_dsn, "SELECT state, count(*) FROM aio88_batch_jobs GROUP BY 1")
    assert states == [("downloaded", total)]
