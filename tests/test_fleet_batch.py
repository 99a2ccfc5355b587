"""One batch shared by several ``aio88 run`` workers (issue "The fleet, part 2"): real
``aio88`` processes, a real PostgreSQL (``postgres_dsn``), the emulator on loopback.

What must hold: three workers on one 60-job batch and one ``--out``, one killed with
SIGKILL mid-way: no job is created twice, the survivors finish every job the dead one had
submitted (once its lease is over), no ``.part`` is left, and a rerun with
``--resend-unconfirmed`` completes the batch with every file present once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from aio88.testing import Emulator

asyncpg = pytest.importorskip("asyncpg", reason="needs asyncpg (the aio88[postgres] extra)")

AIO88 = [sys.executable, "-m", "aio88"]


def _env(emu: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
    env.update(AIO88_API_KEY=emu.api_key, AIO88_BASE_URL=emu.base_url)
    return env


def _jobs(path: Path, n: int) -> Path:
    lines = [{"kind": "video", "prompt": f"fox {i}", "key": f"job-{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


async def _aio88(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    result = await anyio.run_process([*AIO88, *args], env=env, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


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
    jobs, out = _jobs(tmp_path / "jobs.jsonl", 20), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.2), poll_after_ms=50) as emu:
        env = _env(emu)
        argv = ["run", str(jobs), "--out", str(out), "--ledger", postgres_dsn, "--lease", "2"]
        results: list[tuple[int, str, str]] = []

        async def worker() -> None:
            results.append(await _aio88(*argv, "--json", env=env))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(worker)
        assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
        assert emu.creates == 20
        prompts = Counter(task.prompt for task in emu.tasks.values())
        assert set(prompts.values()) == {1}
        rows = await _rows(postgres_dsn, "SELECT state, count(*) FROM aio88_batch_jobs GROUP BY 1")
        assert {row[0]: row[1] for row in rows} == {"downloaded": 20}

        code, stdout, stderr = await _aio88(
            "run", "--status", str(out), "--ledger", postgres_dsn, "--json", env=env
        )
        assert code == 0, stderr
        assert _events(stdout)[-1]["downloaded"] == 20
        # A file gone is noticed when the folder is named, and only then.
        next((out / "videos").glob("*.mp4")).unlink()
        code, stdout, _ = await _aio88(
            "run", "--status", str(out), "--ledger", postgres_dsn, "--json", env=env
        )
        assert code == 1 and _events(stdout)[-1]["missing"] == 1
        code, stdout, _ = await _aio88("run", "--status", "--ledger", postgres_dsn, env=env)
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
    jobs, out = _jobs(tmp_path / "jobs.jsonl", total), tmp_path / "out"
    async with Emulator(duration=(1.0, 2.0), poll_after_ms=100) as emu:
        env = _env(emu)
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
            code, stdout, stderr = await _aio88(
                "run", "--status", "--ledger", postgres_dsn, "--json", env=env
            )
            assert code == 1, stderr
            assert [e for e in _events(stdout) if e["event"] == "worker"]

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

        code, _, stderr = await _aio88(
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
        code, stdout, _ = await _aio88(
            "run", "--status", str(out), "--ledger", postgres_dsn, "--json", env=env
        )
        assert code == 0 and _events(stdout)[-1]["downloaded"] == total
    paths = [row[0] for row in await _rows(postgres_dsn, "SELECT path FROM aio88_batch_jobs")]
    files = {path.absolute() for path in (out / "videos").glob("*.mp4")}
    assert len(set(paths)) == total and {Path(path) for path in paths} == files
    assert not list(out.rglob("*.part"))
