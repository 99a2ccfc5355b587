"""The shared batch ledger (``aio88 run --ledger``) when its database fails: a real
PostgreSQL (``postgres_dsn``), the emulator, real ``aio88`` processes where it matters.

What must hold: an outage of several seconds in the middle of a run is waited out (every
job created once and downloaded, exit 0, a few log lines and no traceback), also by two
workers whose heartbeats failed for longer than two leases (neither takes the other for
dead once the database is back); an outage longer than the worker's patience stops it
with one clear error naming the database (and every later statement fails at once, as
after a second Ctrl-C); a statement whose answer is lost after its commit gives, tried
again, what the first try would have: a claim returns the job it took, a take-over the
jobs it took, a state change counts as made, and a change another worker made since is
not undone.
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
from postgres import database_outage

from aio88.testing import Emulator, ManualClock

asyncpg = pytest.importorskip("asyncpg", reason="needs asyncpg (the aio88[postgres] extra)")
from aio88._ledger import Job  # noqa: E402
from aio88.fleet import FleetError  # noqa: E402 - needs asyncpg
from aio88.fleet._batch import PostgresLedger, open_batch  # noqa: E402

_DEAD = "gone-host:1:dead"  # a worker id with no process row: dead


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
        self.after_lost: Callable[[], Awaitable[object]] | None = None  # then runs this
        self.calls = 0  # statements sent

    def acquire(self) -> Any:
        return self._pool.acquire()

    def _call(self, kind: str) -> Callable[..., Awaitable[Any]]:
        async def call(query: str, *args: object) -> Any:
            self.calls += 1
            result = await getattr(self._pool, kind)(query, *args)
            if self.lose == kind:
                self.lose = None
                if self.after_lost is not None:
                    await self.after_lost()
                raise asyncpg.exceptions.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation (the test lost it)"
                )
            return result

        return call

    def __getattr__(self, kind: str) -> Callable[..., Awaitable[Any]]:
        return self._call(kind)


@asynccontextmanager
async def _losing_ledger(
    dsn: str, **options: Any
) -> AsyncIterator[tuple[PostgresLedger, _LosingPool]]:
    """A worker's ledger (its fleet row alive) whose statements' answers a test can lose."""
    async with open_batch(dsn, lease=5) as seat:
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
        try:
            losing = _LosingPool(pool)
            ledger = PostgresLedger(
                cast(Any, losing), worker=seat.worker, where="127.0.0.1:5", **options
            )
            yield ledger, losing
        finally:
            await pool.close()


def _jobs(n: int) -> list[Job]:
    return [
        Job(key=f"job-{i}", line=i + 1, kind="video", request={"prompt": f"fox {i}"})
        for i in range(n)
    ]


async def test_a_claim_whose_answer_was_lost_returns_its_job(postgres_dsn: str) -> None:
    async with _losing_ledger(postgres_dsn) as (ledger, losing):
        await ledger.add_new(_jobs(3))
        first = await ledger.claim(set())
        assert first is not None and first.key == "job-0"
        losing.lose = "fetchrow"  # job-1 is claimed, and this worker never hears of it
        second = await ledger.claim({first.key})
        assert second is not None
        states = dict(await _rows(postgres_dsn, "SELECT key, state FROM aio88_batch_jobs"))
        # The try again returned the job the lost answer had claimed, and claimed no other.
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
        taken = await ledger.take_over()
        assert [job.key for job in taken] == ["job-0", "job-1"]  # not job-2: ours already
        owners = await _rows(postgres_dsn, "SELECT DISTINCT owner FROM aio88_batch_jobs")
        assert owners == [(ledger.worker,)]


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


async def test_a_state_change_tried_again_does_not_undo_another_workers(
    postgres_dsn: str,
) -> None:
    """``--resend-unconfirmed`` puts a job back to ``pending``; the answer is lost; before
    the try again, another worker claims it, sends it and loses the answer in turn
    (``unconfirmed`` again). The try again must not make it ``pending`` a second time (a
    second blind resend)."""
    async with _losing_ledger(postgres_dsn) as (ledger, losing):
        await ledger.add_new(_jobs(1))
        await _rows(postgres_dsn, "UPDATE aio88_batch_jobs SET state = 'unconfirmed'")

        async def another_worker_resends() -> None:
            await _rows(
                postgres_dsn,
                "UPDATE aio88_batch_jobs SET state = 'unconfirmed', owner = NULL, op = 'theirs'",
            )

        losing.lose, losing.after_lost = "execute", another_worker_resends
        assert not await ledger.set_state("job-0", "pending", was="unconfirmed")
        assert await _rows(postgres_dsn, "SELECT state, op FROM aio88_batch_jobs") == [
            ("unconfirmed", "theirs")
        ]


async def test_a_worker_just_back_from_an_outage_takes_nobody_for_dead(
    postgres_dsn: str,
) -> None:
    """Every worker's heartbeat failed during the outage: for two leases after the
    database is back, a worker buries and takes over nothing; then it does."""
    clock = ManualClock()
    async with _losing_ledger(postgres_dsn, clock=clock, lease=5.0) as (ledger, _):
        await ledger.add_new(_jobs(2))
        await _rows(
            postgres_dsn,
            "UPDATE aio88_batch_jobs SET owner = $1, task_id = 't-' || key, confirmed = true, "
            "state = CASE key WHEN 'job-0' THEN 'submitting' ELSE 'submitted' END",
            _DEAD,
        )
        async with database_outage(postgres_dsn):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ledger.counts)  # fails, and waits for the database
                await anyio.sleep(0.3)
                tg.cancel_scope.cancel()
        await ledger.counts()  # the database is back
        clock.advance(9.9)  # under two leases
        assert await ledger.bury() == 0 and await ledger.take_over() == []
        clock.advance(0.2)
        assert await ledger.bury() == 1
        assert [job.key for job in await ledger.take_over()] == ["job-1"]


async def test_a_dead_workers_claims_never_confirmed_go_back_to_pending(
    postgres_dsn: str,
) -> None:
    """A dead worker's claim confirmed before a write may have been sent: ``unconfirmed``.
    One never confirmed was not (and its worker, should it come back, confirms before it
    writes and finds the job gone): ``pending`` again, for anyone to create."""
    async with _losing_ledger(postgres_dsn) as (ledger, _):
        await ledger.add_new(_jobs(2))
        await _rows(
            postgres_dsn,
            "UPDATE aio88_batch_jobs SET owner = $1, state = 'submitting', "
            "confirmed = (key = 'job-0')",
            _DEAD,
        )
        assert await ledger.bury() == 1
        rows = await _rows(postgres_dsn, "SELECT key, state, owner FROM aio88_batch_jobs")
        assert sorted(rows) == [("job-0", "unconfirmed", None), ("job-1", "pending", None)]
        claimed = await ledger.claim(set())
        assert claimed is not None and claimed.key == "job-1"


async def test_an_outage_longer_than_the_patience_stops_the_worker(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _losing_ledger(postgres_dsn, patience=1.0) as (ledger, pool):
        await ledger.add_new(_jobs(2))
        with caplog.at_level(logging.WARNING, logger="aio88.fleet"):
            async with database_outage(postgres_dsn):
                with pytest.raises(FleetError) as raised:
                    await ledger.counts()
                message = str(raised.value)
                assert "postgresql 127.0.0.1:5" in message and "out of reach for" in message
                assert "not currently accepting connections" in message
            # Back now, but the worker has stopped: every statement fails at once.
            sent = pool.calls
            with pytest.raises(FleetError):
                await ledger.claim(set())
            assert pool.calls == sent
        lines = [r.getMessage() for r in caplog.records if r.name == "aio88.fleet"]
        assert any("retrying for up to 1 s" in line for line in lines)
    assert await _rows(postgres_dsn, "SELECT count(*) FROM aio88_batch_jobs") == [(2,)]


async def test_once_told_to_stop_waiting_a_statement_fails_at_once(postgres_dsn: str) -> None:
    """A second Ctrl-C during an outage: the run is not held for the patience."""
    async with _losing_ledger(postgres_dsn) as (ledger, pool):
        await ledger.add_new(_jobs(1))
        ledger.stop_waiting()
        async with database_outage(postgres_dsn):
            sent = pool.calls
            with pytest.raises(FleetError) as raised:
                await ledger.set_state("job-0", "pending")
            assert pool.calls == sent + 1  # one try, no wait for the database
        assert "out of reach (the last failure" in str(raised.value)


async def _workers_through_an_outage(
    emu: Emulator,
    dsn: str,
    argv: list[str],
    logs: list[Path],
    *,
    creates_first: int,
    outage: float,
) -> list[int]:
    """Run one ``aio88`` worker per log (its stdout there, its stderr beside it as
    ``.err``); once the emulator has ``creates_first`` creates, the database of ``dsn``
    refuses connections for ``outage`` seconds. Returns the workers' exit codes."""
    workers = []
    try:
        for log in logs:
            with log.open("wb") as stdout, log.with_suffix(".err").open("wb") as stderr:
                workers.append(
                    await anyio.open_process(
                        [*AIO88, *argv], env=emulator_env(emu), stdout=stdout, stderr=stderr
                    )
                )
        with anyio.fail_after(30):
            while emu.creates < creates_first:  # noqa: ASYNC110 - the emulator's count
                await anyio.sleep(0.02)
        async with database_outage(dsn):
            await anyio.sleep(outage)
        with anyio.fail_after(90):
            return [await worker.wait() for worker in workers]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
            await worker.aclose()


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
        log = tmp_path / "worker.jsonl"
        (code,) = await _workers_through_an_outage(
            emu,
            postgres_dsn,
            [*argv, "--create-concurrency", "1", "--json"],
            [log],
            creates_first=3,
            outage=5.0,
        )
        errors = log.with_suffix(".err").read_text()
        assert code == 0, errors
        assert "Traceback" not in errors
        assert "retrying for up to" in errors and "database is back" in errors
        created = Counter(task.prompt for task in emu.tasks.values())
    assert created == Counter(f"fox {i}" for i in range(total))
    done = [e for e in json_events(log.read_text()) if e["event"] == "done"]
    assert len(done) == total
    assert len(list((out / "videos").iterdir())) == total
    states = await _rows(postgres_dsn, "SELECT state, count(*) FROM aio88_batch_jobs GROUP BY 1")
    assert states == [("downloaded", total)]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_workers_outlive_an_outage_longer_than_their_leases(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Two workers (lease 1 s) and a 4 s outage while both create and poll: every
    heartbeat fails for over two leases, yet once the database is back neither buries or
    takes over the other's jobs. Nothing is left unconfirmed; each job is created once."""
    total = 24
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", total), tmp_path / "out"
    async with Emulator(duration=(1.0, 3.0)) as emu:
        emu.faults.latency = 0.1
        argv = ["run", str(jobs), "--out", str(out), "--ledger", postgres_dsn, "--lease", "1"]
        logs = [tmp_path / f"{name}.jsonl" for name in ("a", "b")]
        codes = await _workers_through_an_outage(
            emu,
            postgres_dsn,
            [*argv, "--create-concurrency", "2", "-v", "--json"],
            logs,
            creates_first=6,
            outage=4.0,
        )
        created = Counter(task.prompt for task in emu.tasks.values())
    assert codes == [0, 0]
    assert created == Counter(f"fox {i}" for i in range(total))
    events = [e for log in logs for e in json_events(log.read_text())]
    assert not [e for e in events if e["event"] in ("unconfirmed", "lost", "taken_over")]
    states = await _rows(postgres_dsn, "SELECT state, count(*) FROM aio88_batch_jobs GROUP BY 1")
    assert states == [("downloaded", total)]
