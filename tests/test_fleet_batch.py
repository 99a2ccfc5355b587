"""One batch shared by several ``aio88 run`` workers (issue "The fleet, part 2"): real
``aio88`` processes, a real PostgreSQL (``postgres_dsn``), the emulator on loopback.

What must hold: three workers on one 60-job batch and one ``--out``, one killed with
SIGKILL mid-way: no job is created twice, the survivors finish every job the dead one had
submitted (once its lease is over), no ``.part`` is left, and a rerun with
``--resend-unconfirmed`` completes the batch with every file present once. Also: a worker
stopped (SIGSTOP) past two of its leases, then woken, leaves the jobs taken over from it
alone; ``--reconcile --ledger`` settles the shared batch's unconfirmed jobs; Ctrl-C of one
worker exits 130 and hands its polls over at once.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from commands import AIO88, aio88_process, emulator_env, json_events, write_jobs

from aio88 import Client
from aio88._cli._creates import Creates
from aio88._cli._output import Printer
from aio88._ledger import Job
from aio88.testing import Emulator, Faults

asyncpg = pytest.importorskip("asyncpg", reason="needs asyncpg (the aio88[postgres] extra)")
from aio88.fleet._batch import PostgresLedger, open_batch  # noqa: E402 - needs asyncpg


async def _rows(dsn: str, query: str, *args: object) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_workers_started_together_import_once(tmp_path: Path, postgres_dsn: str) -> None:
    """Three workers started at once on one file: every one comes up, each job is imported
    and created once, all exit 0; ``--status --ledger`` reports the finished batch."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 20), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.2), poll_after_ms=50) as emu:
        env = emulator_env(emu)
        argv = ["run", str(jobs), "--out", str(out), "--ledger", postgres_dsn, "--lease", "2"]
        results: list[tuple[int, str, str]] = []

        async def worker() -> None:
            results.append(await aio88_process(*argv, "--json", env=env))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(worker)
        assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
        assert emu.creates == 20
        prompts = Counter(task.prompt for task in emu.tasks.values())
        assert set(prompts.values()) == {1}
        rows = await _rows(postgres_dsn, "SELECT state, count(*) FROM aio88_batch_jobs GROUP BY 1")
        assert {row[0]: row[1] for row in rows} == {"downloaded": 20}

        code, stdout, stderr = await aio88_process(
            "run", "--status", str(out), "--ledger", postgres_dsn, "--json", env=env
        )
        assert code == 0, stderr
        assert json_events(stdout)[-1]["downloaded"] == 20
        # A file gone is noticed when the folder is named, and only then.
        next((out / "videos").glob("*.mp4")).unlink()
        code, stdout, _ = await aio88_process(
            "run", "--status", str(out), "--ledger", postgres_dsn, "--json", env=env
        )
        assert code == 1 and json_events(stdout)[-1]["missing"] == 1
        code, stdout, _ = await aio88_process("run", "--status", "--ledger", postgres_dsn, env=env)
        assert code == 0
    assert len(list((out / "videos").glob("*.mp4"))) == 19


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_worker_killed_mid_way(tmp_path: Path, postgres_dsn: str) -> None:
    """Three workers, one 60-job batch, one --out; one worker is killed (SIGKILL) while it
    has creates in flight and tasks to poll. No job is created twice; the survivors poll and
    download every task the dead one had created (after its lease), its creates in flight
    become unconfirmed, no .part is left; the rerun with --resend-unconfirmed completes
    the batch with one file per job."""
    total, lease = 60, 2.0
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", total), tmp_path / "out"
    async with Emulator(duration=(1.0, 2.0), poll_after_ms=100) as emu:
        env = emulator_env(emu)
        argv = [
            *AIO88,
            "run",
            str(jobs),
            "--out",
            str(out),
            "--ledger",
            postgres_dsn,
            "--lease",
            str(lease),
            "--create-concurrency",
            "3",
            "--quiet",
        ]
        emu.faults.latency = 0.3  # creates take a while: some are in flight at the kill
        silent = subprocess.DEVNULL
        workers = [
            await anyio.open_process(argv, env=env, stdout=silent, stderr=silent) for _ in range(3)
        ]
        victim = workers[0]
        try:
            with anyio.fail_after(60):
                while True:
                    await anyio.sleep(0.05)
                    made = await _rows(
                        postgres_dsn, "SELECT to_regclass('aio88_batch_jobs') IS NOT NULL"
                    )
                    if not made[0][0]:
                        continue  # the workers are still starting
                    rows = await _rows(
                        postgres_dsn,
                        "SELECT count(*) FROM aio88_batch_jobs WHERE state = 'submitted' "
                        "AND owner LIKE $1",
                        f"%:{victim.pid}:%",
                    )
                    if rows[0][0] >= 3:
                        break
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            orphans = await _rows(
                postgres_dsn,
                "SELECT key, state FROM aio88_batch_jobs WHERE owner LIKE $1 "
                "AND state IN ('submitted', 'submitting')",
                f"%:{victim.pid}:%",
            )
            submitted = {row[0] for row in orphans if row[1] == "submitted"}
            in_flight = {row[0] for row in orphans if row[1] == "submitting"}
            assert submitted  # the dead worker left tasks to poll

            # Who holds what, while the dead worker's lease runs.
            code, stdout, stderr = await aio88_process(
                "run", "--status", "--ledger", postgres_dsn, "--json", env=env
            )
            assert code == 1, stderr
            assert [e for e in json_events(stdout) if e["event"] == "worker"]

            emu.faults.latency = 0.0
            with anyio.fail_after(90):
                codes = [await worker.wait() for worker in workers[1:]]
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                await worker.aclose()
        # 0, or 1 when the dead worker left creates unconfirmed.
        assert set(codes) <= {0, 1}
        prompts = Counter(task.prompt for task in emu.tasks.values())
        assert set(prompts.values()) == {1}  # no job created twice
        states = dict(await _rows(postgres_dsn, "SELECT key, state FROM aio88_batch_jobs"))
        assert all(states[key] == "downloaded" for key in submitted)
        unconfirmed = {key for key, state in states.items() if state == "unconfirmed"}
        assert unconfirmed <= in_flight  # only creates the dead worker had in flight
        assert Counter(states.values()) == Counter(
            downloaded=total - len(unconfirmed), unconfirmed=len(unconfirmed)
        )
        assert not list(out.rglob("*.part"))

        code, _, stderr = await aio88_process(
            "run",
            str(jobs),
            "--out",
            str(out),
            "--ledger",
            postgres_dsn,
            "--resend-unconfirmed",
            env=env,
        )
        assert code == 0, stderr
        # Each job was created once, but for an unconfirmed one whose create had arrived.
        assert len(emu.tasks) <= total + len(unconfirmed)
        code, stdout, _ = await aio88_process(
            "run", "--status", str(out), "--ledger", postgres_dsn, "--json", env=env
        )
        assert code == 0 and json_events(stdout)[-1]["downloaded"] == total
    paths = [row[0] for row in await _rows(postgres_dsn, "SELECT path FROM aio88_batch_jobs")]
    files = {path.absolute() for path in (out / "videos").glob("*.mp4")}
    assert len(set(paths)) == total and {Path(path) for path in paths} == files
    assert not list(out.rglob("*.part"))


def _model_jobs(path: Path, n: int) -> Path:
    """Jobs with a model, as ``--reconcile`` needs to tell their tasks apart."""
    lines = [
        {"kind": "video", "model": "sora-2", "prompt": f"fox {i}", "key": f"job-{i}"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _dashboard_env(emu: Emulator) -> dict[str, str]:
    env = emulator_env(emu)
    env.update(AIO88_DASHBOARD_TOKEN=emu.dashboard_token, AIO88_USER_ID=str(emu.user_id))
    return env


def _file_events(path: Path) -> list[dict[str, Any]]:
    return json_events(path.read_text())


async def _until_rows(dsn: str, query: str, *args: object, within: float = 60.0) -> None:
    """Until ``query``'s first value is true (the batch table may not exist yet)."""
    with anyio.fail_after(within):
        while True:
            await anyio.sleep(0.05)
            made = await _rows(dsn, "SELECT to_regclass('aio88_batch_jobs') IS NOT NULL")
            if made[0][0] and (await _rows(dsn, query, *args))[0][0]:
                return


async def _until_held(emu: Emulator, count: int) -> None:
    """Until ``count`` creates are held by the emulator (received, not answered)."""
    with anyio.fail_after(30):
        while sum(r.method == "POST" and r.elapsed is None for r in emu.requests) < count:  # noqa: ASYNC110 - the emulator's log, no event to wait on
            await anyio.sleep(0.02)


async def _hold_creates_after(emu: Emulator, dsn: str, owner: str, *, submitted: int) -> None:
    """Once the worker ``owner`` (a LIKE pattern) has ``submitted`` jobs created, the
    emulator holds its answers (creates sent from then on are stored, not answered),
    until one create is held."""
    await _until_rows(
        dsn,
        "SELECT count(*) >= $2 FROM aio88_batch_jobs WHERE state = 'submitted' AND owner LIKE $1",
        owner,
        submitted,
    )
    emu.faults.latency = 60.0
    await _until_held(emu, 1)


@asynccontextmanager
async def _one_job_batch(dsn: str) -> AsyncIterator[tuple[Emulator, PostgresLedger, Client]]:
    """A worker's seat in a batch of one job (``job-0``), the emulator and a client."""
    async with (
        Emulator() as emu,
        open_batch(dsn, lease=5) as ledger,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        request = {"model": "sora-2", "prompt": "fox"}
        await ledger.add_new([Job(key="job-0", line=1, kind="video", request=request)])
        yield emu, ledger, client


_SNAPSHOT = (
    "SELECT key, state, task_id, path, size, sha256, owner, error, timed_out, updated_at "
    "FROM aio88_batch_jobs ORDER BY key"
)


async def test_a_claim_taken_before_its_create_is_written_sends_nothing(
    postgres_dsn: str,
) -> None:
    """Between a job's claim and its create's first byte lie the rate budget's wait, a
    connection, perhaps a process stopped: if another worker took this one for dead
    meanwhile (and made the job ``unconfirmed``), the claim is confirmed just before the
    write, fails, and nothing is sent; the job stays as that worker left it, said lost."""
    async with _one_job_batch(postgres_dsn) as (emu, ledger, client):

        async def claim_then_buried(skip: set[str]) -> Job | None:
            job = await ledger.claim(skip)
            if job is not None:  # what the taker's bury() does to it
                await _rows(
                    postgres_dsn,
                    "UPDATE aio88_batch_jobs SET state = 'unconfirmed', owner = NULL "
                    "WHERE key = $1",
                    job.key,
                )
            return job

        given_up: list[tuple[str, str]] = []
        out = io.StringIO()
        creates = Creates(
            client,
            ledger,
            Printer(json_lines=True, verbose=1, stream=out),
            on_created=lambda job, task: pytest.fail(f"{job.key} created"),
            on_given_up=lambda job, state: given_up.append((job.key, state)),
            concurrency=1,
            shared=ledger,
        )
        await creates.run_claimed(claim_then_buried)
        assert not [r for r in emu.requests if r.method == "POST"]
    assert given_up == [("job-0", "lost")]
    assert [e["key"] for e in json_events(out.getvalue()) if e["event"] == "lost"] == ["job-0"]
    rows = await _rows(postgres_dsn, "SELECT state, owner FROM aio88_batch_jobs")
    assert [tuple(row) for row in rows] == [("unconfirmed", None)]


async def test_a_job_another_worker_gives_up_on_is_created_by_one_still_here(
    postgres_dsn: str,
) -> None:
    """Worker A gives a job up as ``pending`` (its tries all failed, nothing sent) after
    worker B found nothing left to claim: B's create loop is still there, claims it and
    creates it, then ends (before, B's loop had ended, and both waited forever)."""
    async with _one_job_batch(postgres_dsn) as (emu, ledger, client):
        await _rows(
            postgres_dsn, "UPDATE aio88_batch_jobs SET state = 'submitting', owner = 'a:1:x'"
        )
        created: list[str] = []
        creates = Creates(
            client,
            ledger,
            Printer(json_lines=True, stream=io.StringIO()),
            on_created=lambda job, task: created.append(job.key),
            on_given_up=lambda job, state: pytest.fail(f"{job.key} given up: {state}"),
            concurrency=2,
            shared=ledger,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(creates.run_claimed, ledger.claim)
            await anyio.sleep(0.3)  # B looks, and finds only A's create in flight
            assert not created and not creates.settled.is_set()
            await _rows(postgres_dsn, "UPDATE aio88_batch_jobs SET state = 'pending', owner = NULL")
            await creates.settled.wait()
        assert created == ["job-0"] and emu.creates == 1


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_worker_asleep_past_its_leases_leaves_its_jobs_to_the_taker(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A worker stopped (SIGSTOP: a laptop asleep) with tasks to poll and creates held by
    the server, for longer than two of its leases: a live worker takes its tasks over,
    marks its creates sent (claims confirmed) unconfirmed, and creates those it had only
    claimed. Woken (SIGCONT), the sleeper finds those jobs
    no longer its own: it downloads nothing, writes nothing (the batch is exactly as the
    taker left it) and says so (``lost``); no job is created twice. A rerun with
    ``--reconcile`` then finds the unconfirmed creates' tasks in the dashboard's list and
    completes the batch, one file per job."""
    total = 12
    jobs, out = _model_jobs(tmp_path / "jobs.jsonl", total), tmp_path / "out"
    async with Emulator(duration=(1.0, 1.5), poll_after_ms=100) as emu:
        env = _dashboard_env(emu)
        argv = ["run", str(jobs), "--out", str(out), "--ledger", postgres_dsn, "--lease", "1"]
        emu.faults.latency = 0.2  # creates take a while: some are left when it is stopped
        sleeper_log = tmp_path / "sleeper.jsonl"
        with sleeper_log.open("wb") as log:
            sleeper = await anyio.open_process(
                [*AIO88, *argv, "--create-concurrency", "2", "-v", "--json"],
                env=env,
                stdout=log,
                stderr=subprocess.DEVNULL,
            )
        mine = f"%:{sleeper.pid}:%"
        try:
            await _hold_creates_after(emu, postgres_dsn, mine, submitted=4)
            sleeper.send_signal(signal.SIGSTOP)
            await anyio.sleep(0.2)  # a statement it sent just before runs all the same
            held = {
                key: (state, confirmed)
                for key, state, confirmed in await _rows(
                    postgres_dsn,
                    "SELECT key, state, confirmed FROM aio88_batch_jobs WHERE owner LIKE $1",
                    mine,
                )
            }
            submitted = {key for key, (state, _) in held.items() if state == "submitted"}
            in_flight = {key for key, (state, _) in held.items() if state == "submitting"}
            # Claims confirmed just before the first byte: those creates may have gone out.
            sent = {key for key, (state, yes) in held.items() if state == "submitting" and yes}
            assert submitted and sent
            # The held creates are stored now; their answers wait in the sleeper's socket.
            emu.faults.latency = 0.0

            code, stdout, stderr = await aio88_process(*argv, "-v", "--json", env=env)
            assert code == 1, stderr  # the sleeper's creates sent are unconfirmed
            taken = {e["key"] for e in json_events(stdout) if e["event"] == "taken_over"}
            assert submitted <= taken
            states = dict(await _rows(postgres_dsn, "SELECT key, state FROM aio88_batch_jobs"))
            assert {k for k, s in states.items() if s == "unconfirmed"} == sent
            # Claimed, never confirmed: put back, and created by the taker.
            assert all(states[key] == "downloaded" for key in submitted | (in_flight - sent))
            before = await _rows(postgres_dsn, _SNAPSHOT)
            seen = len(emu.requests)

            sleeper.send_signal(signal.SIGCONT)
            with anyio.fail_after(60):
                assert await sleeper.wait() == 1
        finally:
            if sleeper.returncode is None:
                sleeper.send_signal(signal.SIGCONT)
                sleeper.kill()
            await sleeper.aclose()
        assert await _rows(postgres_dsn, _SNAPSHOT) == before  # nothing overwritten
        woken = emu.requests[seen:]
        assert not [r for r in woken if r.origin == "media" or r.path.endswith("/content")]
        assert not [r for r in woken if r.method == "POST"]
        lost = {e["key"] for e in _file_events(sleeper_log) if e["event"] == "lost"}
        assert submitted <= lost  # said, at -v
        assert lost <= submitted | in_flight
        prompts = Counter(task.prompt for task in emu.tasks.values())
        assert len(prompts) == total and set(prompts.values()) == {1}  # none created twice

        # Two minutes later, as far as the creates' deadlines go: --reconcile settles the
        # unconfirmed jobs from the dashboard's task list.
        connection = await asyncpg.connect(postgres_dsn)
        try:
            await connection.execute(
                "UPDATE aio88_batch_jobs SET sending_since = sending_since - 120, "
                "sending_last = sending_last - 120"
            )
        finally:
            await connection.close()
        code, stdout, stderr = await aio88_process(
            *argv, "--reconcile", "--settle", "0", "--json", env=env
        )
        assert code == 0, stderr + stdout
        adopted = {e["key"]: e["id"] for e in json_events(stdout) if e["event"] == "adopted"}
        assert set(adopted) == sent
        assert {emu.tasks[i].prompt for i in adopted.values()} == {
            f"fox {key.split('-')[1]}" for key in sent
        }
    assert len(emu.tasks) == total  # one task per job, none created twice
    rows = await _rows(postgres_dsn, "SELECT state, path FROM aio88_batch_jobs")
    assert {row[0] for row in rows} == {"downloaded"}
    files = {path.absolute() for path in (out / "videos").glob("*.mp4")}
    assert {Path(row[1]) for row in rows} == files and len(files) == total
    assert not list(out.rglob("*.part"))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_ctrl_c_of_one_worker_hands_its_polls_over_at_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Two workers; the first, whose lease is ten minutes, gets Ctrl-C (SIGINT) while its
    creates are held by the server: it sends nothing more, its creates sent get their
    answers within the grace (submitted, as in a single run), it exits 130 and leaves its
    process row, so the other takes its tasks over at once (not after ten minutes) and
    finishes the batch: every job created once and downloaded."""
    total = 16
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", total), tmp_path / "out"
    async with Emulator(duration=(1.0, 1.5), poll_after_ms=100) as emu:
        env = emulator_env(emu)
        argv = [*AIO88, "run", str(jobs), "--out", str(out), "--ledger", postgres_dsn]
        silent = subprocess.DEVNULL
        emu.faults.latency = 0.2  # creates take a while: some are left at the Ctrl-C
        quitter = await anyio.open_process(
            [*argv, "--lease", "600", "--create-concurrency", "2"],
            env=env,
            stdout=silent,
            stderr=silent,
        )
        mine = f"%:{quitter.pid}:%"
        other_log = tmp_path / "other.jsonl"
        other = None
        try:
            await _hold_creates_after(emu, postgres_dsn, mine, submitted=3)
            with other_log.open("wb") as log:
                other = await anyio.open_process(
                    [*argv, "--lease", "1", "-v", "--json"], env=env, stdout=log, stderr=silent
                )
            await _until_rows(
                postgres_dsn,
                "SELECT count(*) >= 1 FROM aio88_batch_jobs WHERE state = 'submitting' "
                "AND owner LIKE $1",
                mine,
            )
            quitter.send_signal(signal.SIGINT)
            await anyio.sleep(0.3)  # its Ctrl-C is taken before the answers come
            emu.faults.latency = 0.0  # within the grace: the creates sent are answered
            with anyio.fail_after(30):
                assert await quitter.wait() == 130
            left = await _rows(
                postgres_dsn, "SELECT count(*) FROM aio88_processes WHERE id LIKE $1", mine
            )
            assert left[0][0] == 0  # it left the fleet
            held = dict(
                await _rows(
                    postgres_dsn,
                    "SELECT key, state FROM aio88_batch_jobs WHERE owner LIKE $1",
                    mine,
                )
            )
            # Nothing of it stays "being created"; what it leaves is taken over.
            assert "submitting" not in held.values()
            with anyio.fail_after(60):
                assert await other.wait() == 0
        finally:
            for process in (quitter, other):
                if process is None:
                    continue
                if process.returncode is None:
                    process.kill()
                await process.aclose()
        taken = {e["key"] for e in _file_events(other_log) if e["event"] == "taken_over"}
        assert {key for key, state in held.items() if state == "submitted"} <= taken
        prompts = Counter(task.prompt for task in emu.tasks.values())
        assert len(prompts) == total and set(prompts.values()) == {1}
    states = dict(await _rows(postgres_dsn, "SELECT key, state FROM aio88_batch_jobs"))
    assert Counter(states.values()) == {"downloaded": total}
    assert len(list((out / "videos").glob("*.mp4"))) == total
    assert not list(out.rglob("*.part"))


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_create_waiting_out_a_429_is_not_claimed_again(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A create put back to ``pending`` for a 429's pause stays this worker's one create:
    the worker does not claim it a second time (each job created once, no traceback)."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    # Creates in 429 pauses while slots are free: the worker looks for work meanwhile.
    storm = Faults(rate_429=0.4, retry_after=1.5)
    async with Emulator(duration=(0.2, 0.5), faults=storm) as emu:
        code, _, err = await aio88_process(
            "run", str(jobs), "--out", str(tmp_path / "out"), "--ledger", postgres_dsn,
            "--lease", "5", "--create-concurrency", "4", "--json",
            env=emulator_env(emu),
        )  # fmt: skip
        assert code == 0, err
        assert "Traceback" not in err
        created = Counter(task.prompt for task in emu.tasks.values())
    assert created == Counter(f"fox {i}" for i in range(6))
