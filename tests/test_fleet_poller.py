"""The poller in a fleet, in one test process: two ``Fleet`` seats (as two replicas would
hold), each with its own ``Client(fleet=...)``, a real PostgreSQL and the emulator.

The multi-process versions (SIGKILL, lost LISTEN connections) are in
``test_fleet_replicas.py``; these cover the same paths where coverage can see them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import asyncpg
import pytest
from test_webhook_delivery import event_for

from aio88 import Client, Poller, Schedule, Status, Video
from aio88._coordination import FinishedHandler, HintHandler
from aio88._models import Kind
from aio88._pacing import LocalRateBudget
from aio88.fleet import Fleet, FleetError
from aio88.testing import Emulator, LoggedRequest

KEY = "sk-test"


@asynccontextmanager
async def replicas(dsn: str, emu: Emulator, *names: str) -> AsyncIterator[dict[str, Poller]]:
    """One fleet seat, client and fast poller per name; requests say who sent them."""
    async with AsyncExitStack() as stack:
        pollers: dict[str, Poller] = {}
        for name in names:
            fleet = await stack.enter_async_context(Fleet(dsn, lease=1.0))
            client = await stack.enter_async_context(
                Client(KEY, base_url=emu.base_url, fleet=fleet, headers={"X-Worker": name})
            )
            pollers[name] = await stack.enter_async_context(
                client.poller(schedule=Schedule.fixed(0.05), timeout=None)
            )
        yield pollers


def pollers_of(emu: Emulator, task_id: str) -> list[str]:
    path = f"/v1/videos/{task_id}"
    return [r.headers["x-worker"] for r in emu.requests if r.method == "GET" and r.path == path]


async def until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(8):
        while not predicate():  # noqa: ASYNC110 - state in the emulator
            await anyio.sleep(0.02)


async def test_one_seat_polls_and_both_wake(postgres_dsn: str) -> None:
    async with Emulator(duration=None) as emu, replicas(postgres_dsn, emu, "a", "b") as seats:
        task_id = emu.add_task()
        results: dict[str, Video] = {}

        async def wait(name: str) -> None:
            results[name] = await seats[name].wait(task_id)

        async with anyio.create_task_group() as tg:
            for name in seats:
                tg.start_soon(wait, name)
            await until(lambda: len(pollers_of(emu, task_id)) >= 5)
            emu.complete(task_id)
    assert {name: task.status for name, task in results.items()} == {
        "a": Status.SUCCEEDED,
        "b": Status.SUCCEEDED,
    }
    assert len(set(pollers_of(emu, task_id))) == 1  # the other heard it from the fleet


async def test_a_callback_in_one_seat_makes_the_other_poll(postgres_dsn: str) -> None:
    async with Emulator(duration=None) as emu, replicas(postgres_dsn, emu, "a", "b") as seats:
        task_id = emu.add_task()
        slow = Schedule.fixed(3600)  # only the callback can end it in time
        for poller in seats.values():
            poller.schedule = slow
        async with anyio.create_task_group() as tg:
            for poller in seats.values():
                tg.start_soon(poller.wait, task_id)
            await until(lambda: len(pollers_of(emu, task_id)) == 1)
            [holder] = pollers_of(emu, task_id)
            [other] = set(seats) - {holder}
            emu.complete(task_id)
            await seats[other].deliver(event_for(task_id))  # the callback lands elsewhere
            await until(lambda: len(pollers_of(emu, task_id)) == 2)
            tg.cancel_scope.cancel()
    assert pollers_of(emu, task_id) == [holder, holder]


async def test_an_unreadable_record_is_polled_directly(postgres_dsn: str) -> None:
    async with Emulator(duration=None) as emu, replicas(postgres_dsn, emu, "a") as seats:
        task_id = emu.add_task()
        poller = seats["a"]
        poller.schedule = Schedule.fixed(3600)  # one poll at once, then only the fleet
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.wait, task_id)
            await until(lambda: len(pollers_of(emu, task_id)) >= 1)
            emu.complete(task_id)
            # Another version of aio88 records the end in a form this one cannot read.
            admin = await asyncpg.connect(postgres_dsn)
            try:
                await admin.execute(
                    "UPDATE aio88_tasks SET finished_at = now(), task_json = 'not json', "
                    "owner = NULL WHERE task_id = $1",
                    task_id,
                )
                await admin.execute("SELECT pg_notify('aio88_finished', $1)", task_id)
            finally:
                await admin.close()
            with anyio.fail_after(8):
                task = await poller.wait(task_id)
            tg.cancel_scope.cancel()
    assert task.status is Status.SUCCEEDED


def test_a_fleet_must_be_started_for_a_client(postgres_dsn: str) -> None:
    fleet = Fleet(postgres_dsn)
    with pytest.raises(FleetError, match="start the fleet first"):
        Client(KEY, fleet=fleet)
    with pytest.raises(TypeError, match=r"aio88\.fleet\.Fleet"):
        Client(KEY, fleet=object())  # type: ignore[arg-type]


async def test_a_fleet_closed_under_a_poller_fails_its_waits_clearly(postgres_dsn: str) -> None:
    async with Emulator(duration=None) as emu:
        task_id = emu.add_task()
        fleet = Fleet(postgres_dsn, lease=1.0)
        await fleet.start()
        async with (
            Client(KEY, base_url=emu.base_url, fleet=fleet) as client,
            client.poller(schedule=Schedule.fixed(0.05), timeout=None) as poller,
        ):
            failure: list[BaseException] = []

            async def wait() -> None:
                try:
                    await poller.wait(task_id)
                except FleetError as exc:
                    failure.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await until(lambda: emu.count("GET") >= 1)
                await fleet.aclose()  # the wrong order: the fleet before its poller
    [error] = failure
    assert "close the fleet after the clients and pollers" in str(error)


class _AllMine:
    """Task leases of a process that holds every lease, whose "another process wrote
    this task's end" notices the test sends (``ended``): the fleet's notification, at a
    moment of the test's choosing (with PostgreSQL, the test cannot hold a poll in flight
    while another process writes the end)."""

    lease = 30.0

    def __init__(self) -> None:
        self.ended: FinishedHandler | None = None

    def subscribe(self, on_finished: FinishedHandler, on_hint: HintHandler) -> Callable[[], None]:
        self.ended = on_finished
        return lambda: None

    def track(self, task_id: str, kind: Kind) -> None:
        return None

    def untrack(self, task_id: str) -> None:
        return None

    def holds(self, task_id: str) -> bool:
        return True

    async def claim(self, task_id: str, kind: Kind) -> bool:
        return True

    def finished(self, task_id: str, kind: Kind, task_json: bytes) -> None:
        return None

    def hint(self, task_id: str) -> None:
        return None


class _OneProcess:
    """A coordinator whose leases are :class:`_AllMine` and whose budget is local."""

    lease_seconds = 30.0

    def __init__(self) -> None:
        self.leases = _AllMine()

    def rate_budget(self, name: str, rate: float | None, clock: Callable[[], float]) -> Any:
        return LocalRateBudget(rate, clock)


async def test_an_end_written_elsewhere_during_a_poll_gives_one_outcome() -> None:
    """A watched task's poll is in flight (held by the server) when the fleet says another
    process wrote the task's end: that ends it here; the poll's answer, when it comes,
    gives no second outcome (a second one ended a batch worker's watch one task early)."""
    coordinator = _OneProcess()
    async with (
        Emulator(duration=None) as emu,
        Client(KEY, base_url=emu.base_url, fleet=coordinator) as client,
    ):
        task_id = emu.add_task()
        async with client.watch([task_id], schedule=Schedule.fixed(0.05)) as watch:
            watch.expect(1)  # kept open: a second outcome would come out

            def gets() -> list[LoggedRequest]:
                return [r for r in emu.requests if r.method == "GET" and task_id in r.path]

            await until(lambda: len(gets()) >= 1 and gets()[0].elapsed is not None)
            emu.faults.latency = 60.0
            await until(lambda: any(r.elapsed is None for r in gets()))  # a poll held
            emu.complete(task_id)
            assert coordinator.leases.ended is not None
            ended = b'{"id":"%s","object":"video","status":"completed","progress":100}'
            coordinator.leases.ended(task_id, "video", ended % task_id.encode())
            first = await watch.__anext__()
            emu.faults.latency = 0.0  # the held poll answers: completed
            await until(lambda: all(r.elapsed is not None for r in gets()))
            with anyio.move_on_after(0.5):
                second = await watch.__anext__()
                pytest.fail(f"a second outcome: {second}")
            watch.forget()
    assert first.id == task_id and first.ok
