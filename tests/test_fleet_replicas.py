"""Replicas of a web backend sharing one fleet (issue "The fleet, part 1"): real processes
(``tests/fleet_worker.py``), a real PostgreSQL (``postgres_dsn``), the emulator on loopback.

What must hold: two processes with ``rate_limit=10`` stay within 10/s plus one burst
together, and a 429 seen by one pauses the other; a task awaited in two processes is polled
by one and wakes both; killing that one (SIGKILL) hands the polling to the other once its
lease has run out; losing the LISTEN connections mid-run loses nothing.

No wall-clock upper bounds: the rate is checked as a count against the time the requests
actually spanned (a slow machine only sends fewer), the pause as an absence of requests.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from aio88.testing import Emulator
from aio88.testing._requests import LoggedRequest

WORKER = Path(__file__).parent / "fleet_worker.py"
LEASE = 1.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


class Worker:
    """One ``fleet_worker.py`` process and the JSON lines it has said so far."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))
            self._changed.set()
        self._changed.set()

    async def said(self, event: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until it has said ``event`` ``count`` times (or fail if it exits first,
        or hangs: then with what it said and its traceback-free stderr)."""
        with anyio.move_on_after(40):
            return await self._said(event, count)
        self.proc.kill()
        assert self.proc.stderr is not None
        err = (await self.proc.stderr.read()).decode()[-2000:]
        raise AssertionError(f"{self.name} never said {event!r}: {self.lines}\n{err}")

    async def _said(self, event: str, count: int) -> list[dict[str, Any]]:
        while True:
            found = [line for line in self.lines if line["event"] == event]
            if len(found) >= count:
                return found
            if self.proc.returncode is not None:
                assert self.proc.stderr is not None
                err = (await self.proc.stderr.read()).decode()
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {err}")
            self._changed.clear()
            with anyio.move_on_after(0.5):
                await self._changed.wait()


@asynccontextmanager
async def workers(
    dsn: str, emu: Emulator, job: list[str], *names: str, rate: float | None = None
) -> AsyncIterator[dict[str, Worker]]:
    """Start one worker per name, all at once; kill what is left at the end."""
    started: dict[str, Worker] = {}
    async with anyio.create_task_group() as tg:
        for name in names:
            args = [str(WORKER), "--dsn", dsn, "--base-url", emu.base_url, "--name", name]
            args += ["--lease", str(LEASE)]
            if rate is not None:
                args += ["--rate", str(rate)]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                *job,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            started[name] = Worker(name, proc)
            tg.start_soon(started[name].read)
        try:
            with anyio.fail_after(30):
                for worker in started.values():
                    await worker.said("ready")
            yield started
        finally:
            for worker in started.values():
                # A worker whose job is done exits by itself (and writes its coverage);
                # one that hangs is killed.
                with anyio.move_on_after(10):
                    await worker.proc.wait()
                if worker.proc.returncode is None:
                    worker.proc.kill()
                await worker.proc.wait()


def gets(emu: Emulator, task_id: str, after: float = 0.0) -> list[LoggedRequest]:
    """The emulator's GETs of ``task_id`` that arrived after ``after`` (monotonic)."""
    path = f"/v1/videos/{task_id}"
    return [r for r in emu.requests if r.method == "GET" and r.path == path and r.at > after]


async def until(predicate: Callable[[], bool], guard: float = 20.0) -> None:
    with anyio.fail_after(guard):
        while not predicate():  # noqa: ASYNC110 - state in the emulator and the workers
            await asyncio.sleep(0.02)


async def test_two_replicas_share_one_rate_limit(postgres_dsn: str) -> None:
    rate = 10.0
    async with Emulator(duration=None) as emu:
        task_id = emu.add_task()
        async with workers(
            postgres_dsn, emu, ["hammer", task_id, "4"], "a", "b", rate=rate
        ) as started:
            for worker in started.values():
                await worker.said("hammered")
        sent = gets(emu, task_id)
    assert {r.headers["x-worker"] for r in sent} == {"a", "b"}
    span = sent[-1].at - sent[0].at
    # Fleet-wide: R per second plus one burst of R (each alone would allow twice that).
    assert len(sent) <= rate * span + rate + 1, (len(sent), span)


async def test_a_429_seen_by_one_replica_pauses_the_other(postgres_dsn: str) -> None:
    async with Emulator(duration=None) as emu:
        task_id = emu.add_task()
        async with workers(
            postgres_dsn, emu, ["hammer", task_id, "5"], "a", "b", rate=20.0
        ) as started:
            await until(lambda: len({r.headers["x-worker"] for r in gets(emu, task_id)}) == 2)
            emu.inject("429", method="GET", retry_after=1.5)
            for worker in started.values():
                await worker.said("hammered")
        sent = gets(emu, task_id)
    [limited] = [r for r in sent if r.status == 429]
    assert limited.elapsed is not None
    answered = limited.at + limited.elapsed
    # Neither replica sends during the pause (a little slack for the notice to travel
    # and for requests already on the wire).
    during = [r for r in sent if answered + 0.2 < r.at < answered + 1.3]
    assert during == [], [(r.headers["x-worker"], r.at - answered) for r in during]
    after = [r for r in sent if r.at >= answered + 1.5]
    assert {r.headers["x-worker"] for r in after} == {"a", "b"}  # both went on


async def test_a_task_awaited_in_two_replicas_is_polled_by_one_and_wakes_both(
    postgres_dsn: str,
) -> None:
    async with Emulator(duration=None) as emu:
        task_id = emu.add_task()
        async with workers(postgres_dsn, emu, ["wait", task_id], "a", "b") as started:
            await until(lambda: len(gets(emu, task_id)) >= 10)
            emu.complete(task_id)
            for worker in started.values():
                [done] = await worker.said("done")
                assert done == {"event": "done", "id": task_id, "status": "succeeded"}
        pollers = {r.headers["x-worker"] for r in gets(emu, task_id)}
    assert len(pollers) == 1  # one stream of polls for the fleet


async def test_killing_the_polling_replica_hands_its_task_over(postgres_dsn: str) -> None:
    async with Emulator(duration=None) as emu:
        task_id = emu.add_task()
        async with workers(postgres_dsn, emu, ["wait", task_id], "a", "b") as started:
            await until(lambda: len(gets(emu, task_id)) >= 3)
            [holder] = {r.headers["x-worker"] for r in gets(emu, task_id)}
            [survivor] = set(started) - {holder}
            started[holder].proc.send_signal(signal.SIGKILL)
            await started[holder].proc.wait()
            killed_at = emu.requests[-1].at
            # Its lease runs out (LEASE s), and the survivor takes the polling over.
            await until(lambda: any(r.at > killed_at for r in gets(emu, task_id)))
            emu.complete(task_id)
            [done] = await started[survivor].said("done")
            assert done["status"] == "succeeded"
        after = gets(emu, task_id, after=killed_at)
    assert {r.headers["x-worker"] for r in after} == {survivor}


async def test_losing_the_listen_connections_loses_nothing(postgres_dsn: str) -> None:
    import asyncpg

    async with Emulator(duration=None) as emu:
        ids = [emu.add_task() for _ in range(3)]
        async with workers(postgres_dsn, emu, ["wait", *ids], "a", "b") as started:
            await until(lambda: all(len(gets(emu, task_id)) >= 2 for task_id in ids))
            admin = await asyncpg.connect(postgres_dsn)
            try:
                killed = await admin.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()"
                )
            finally:
                await admin.close()
            assert len(killed) >= 2  # one LISTEN connection per replica
            for task_id in ids:  # ended while the replicas are reconnecting
                emu.complete(task_id)
            for worker in started.values():
                done = await worker.said("done", count=3)
                assert sorted(line["id"] for line in done) == sorted(ids)
