"""The bulk poller against the emulator: concurrency, rate, deadlines, sharing, exits."""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time

import anyio
import pytest
from clocks import WatchedClock, settle

from aio88 import (
    AuthenticationError,
    Client,
    NotFoundError,
    Outcome,
    Schedule,
    Status,
    TaskFailedError,
    Video,
    WaitTimeoutError,
)
from aio88._schedule import estimate_eta
from aio88.testing import Emulator, Faults
from aio88.testing.pytest_plugin import FAST_RETRY

FAST = Schedule.fixed(0.02)


async def collect(outcomes: object) -> list[Outcome]:
    return [o async for o in outcomes]  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_two_thousand_tasks_at_concurrency_32() -> None:
    """2,000 tasks: never more than 32 requests in flight, each id once, outcomes right."""
    async with Emulator(duration=(0.05, 0.4), faults=Faults(latency=0.01), seed=11) as emu:
        ids = []
        expected: dict[str, Status] = {}
        for n in range(2000):
            task_id = emu.add_task("video" if n % 2 else "generation")
            if n % 3 == 0:  # a third pinned failed, the rest run their lifecycle and succeed
                emu.fail(task_id, f"bad prompt {n}")
                expected[task_id] = Status.FAILED
            else:
                expected[task_id] = Status.SUCCEEDED
            ids.append(task_id)
        async with Client("sk-test", base_url=emu.base_url, retry=FAST_RETRY) as client:
            async with client.watch(ids, concurrency=32, schedule=FAST) as outcomes:
                results = await collect(outcomes)
                stats = outcomes.stats()
    assert emu.max_in_flight <= 32
    assert emu.max_in_flight >= 16  # the concurrency was actually used
    assert len(results) == 2000
    assert collections.Counter(o.id for o in results) == collections.Counter(ids)
    for outcome in results:
        assert outcome.task is not None
        assert outcome.task.status is expected[outcome.id]
        assert outcome.ok is (expected[outcome.id] is Status.SUCCEEDED)
        if not outcome.ok:
            assert isinstance(outcome.error, TaskFailedError)
            assert "bad prompt" in str(outcome.error)
    assert stats.finished == 2000 and stats.tracked == 0


async def test_rate_limit_caps_requests_per_second() -> None:
    """With rate_limit=50 (a bucket of 50 tokens refilled at 50/s), the k-th request to
    reach the server arrives no earlier than the bucket allows: (k - 50) / 50 s after the
    client was made. Only lower bounds on time: a slow machine only makes them easier."""
    rate = burst = 50
    count = 80
    async with Emulator(duration=None) as emu:
        ids = [emu.add_task(status="succeeded") for _ in range(count)]
        started = time.monotonic()  # the emulator logs arrivals on this clock too
        async with Client("sk-test", base_url=emu.base_url, rate_limit=rate) as client:
            async with client.watch(ids, concurrency=64) as outcomes:
                assert len(await collect(outcomes)) == count
        arrivals = sorted(r.at - started for r in emu.requests)
    assert len(arrivals) == count
    for k, arrived in enumerate(arrivals, start=1):
        assert arrived >= (k - burst) / rate - 1e-3, (k, arrived)


@pytest.mark.slow
async def test_429_storm_backs_off_for_everyone_and_finishes() -> None:
    """A quarter of requests answered 429 (no Retry-After): the batch still completes,
    and the poller lowers its concurrency while it lasts."""
    faults = Faults(rate_429=0.25, latency=0.001)
    async with Emulator(duration=None, faults=faults, seed=5) as emu:
        ids = [emu.add_task(status="succeeded") for _ in range(300)]
        async with Client("sk-test", base_url=emu.base_url, retry=FAST_RETRY) as client:
            lowest = math.inf
            async with client.watch(ids, concurrency=32, schedule=FAST) as outcomes:
                results = []
                async for outcome in outcomes:
                    results.append(outcome)
                    lowest = min(lowest, outcomes.stats().concurrency)
                stats = outcomes.stats()
    assert len(results) == 300 and all(o.ok for o in results)
    assert stats.rate_limited > 0
    assert lowest < 32


async def test_per_task_deadline_under_manual_clock() -> None:
    """A task still running at its deadline times out then, not before; no real sleeping."""
    clock = WatchedClock()
    async with Emulator(clock=clock, duration=None) as emu:
        slow, quick = emu.add_task(), emu.add_task()
        async with (
            Client("sk-test", base_url=emu.base_url) as client,
            client.watch([slow, quick], timeout=600, clock=clock) as outcomes,
        ):
            await settle(outcomes.stats, clock)
            emu.complete(quick)
            clock.advance(599)
            await settle(outcomes.stats, clock)
            first = await outcomes.__anext__()
            assert first.id == quick and first.ok
            assert outcomes.pending == 1
            clock.advance(0.5)
            await settle(outcomes.stats, clock)
            assert outcomes.stats().finished == 1  # the slow one: not yet
            clock.advance(1)
            second = await outcomes.__anext__()
    assert second.id == slow
    assert isinstance(second.error, WaitTimeoutError)
    assert second.error.timeout == 600
    assert second.task is not None and second.task.status is Status.QUEUED


async def test_batch_deadline_under_manual_clock() -> None:
    """batch_timeout ends every task still out at that moment."""
    clock = WatchedClock()
    async with Emulator(clock=clock, duration=None) as emu:
        ids = [emu.add_task() for _ in range(5)]
        async with (
            Client("sk-test", base_url=emu.base_url) as client,
            client.watch(ids, timeout=None, batch_timeout=60, clock=clock) as outcomes,
        ):
            await settle(outcomes.stats, clock)
            clock.advance(61)
            results = await collect(outcomes)
    assert sorted(o.id for o in results) == sorted(ids)
    assert all(isinstance(o.error, WaitTimeoutError) for o in results)


async def test_schedule_is_followed_under_manual_clock() -> None:
    """Polls come at the docs' tiers: immediately, then ~5 s apart (±10 %) while young."""
    clock = WatchedClock()
    async with Emulator(clock=clock, duration=None, dialect="docs") as emu:
        task_id = emu.add_task("generation")  # the docs' generation shape has no progress
        async with (
            Client("sk-test", base_url=emu.base_url) as client,
            client.watch([task_id], kind="generation", clock=clock) as outcomes,
        ):
            for _ in range(40):
                await settle(outcomes.stats, clock)
                clock.advance(1)
            emu.complete(task_id)
            clock.advance(10)
            [outcome] = await collect(outcomes)
    assert outcome.ok
    times = [r.clock for r in emu.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0
    assert all(4.0 <= gap <= 6.0 for gap in gaps[:5]), gaps  # 5 s ± 10 %, on 1 s steps
    assert len(emu.requests) <= 10


async def test_progress_lets_the_poller_skip_ahead() -> None:
    """With linear progress, the poller polls near the estimated finish: fewer polls than
    the docs' tiers, and the finish is seen soon after it happens."""
    clock = WatchedClock()
    async with Emulator(clock=clock, duration=(300.0, 300.0), dialect="newapi", seed=2) as emu:
        task_id = emu.add_task("video")
        finish = emu.tasks[task_id].finished_at()
        assert finish is not None
        async with (
            Client("sk-test", base_url=emu.base_url) as client,
            client.watch([task_id], clock=clock) as outcomes,
        ):
            while not outcomes.stats().finished:
                await settle(outcomes.stats, clock)
                clock.advance(0.5)
            [outcome] = await collect(outcomes)
    assert outcome.ok
    last_poll = emu.requests[-1].clock
    assert last_poll - finish < 5.0  # the docs' 30 s tier would average 15 s late
    # The docs' tiers, from an immediate first poll, until the first poll past the finish:
    docs, t = Schedule(jitter=0.0, progress_aware=False), 0.0
    docs_polls = 1
    while t < finish:
        t += docs.next_delay(t, docs_polls)
        docs_polls += 1
    assert len(emu.requests) <= docs_polls


async def test_hundred_waiters_share_one_poll_stream(aio88_emulator: Emulator) -> None:
    """100 concurrent waits on one id cause one stream of polls; cancelling one waiter
    leaves the other 99 served."""
    task_id = aio88_emulator.add_task()
    clock = WatchedClock()
    async with (
        Client("sk-test", base_url=aio88_emulator.base_url) as client,
        client.poller(schedule=FAST, clock=clock) as poller,
    ):
        results: list[Video] = []

        async def waiter() -> None:
            results.append(await poller.wait(task_id))

        async with anyio.create_task_group() as tg:
            for _ in range(99):
                tg.start_soon(waiter)
            async with anyio.create_task_group() as leaving:
                leaving.start_soon(poller.wait, task_id)  # the 100th waiter, who leaves
                await settle(poller.stats, clock)  # the first poll is done; 100 wait
                leaving.cancel_scope.cancel()
            assert poller.stats().tracked == 1  # the others keep it tracked
            assert poller.stats().polls == 1
            aio88_emulator.complete(task_id)
            clock.advance(0.02)  # FAST's interval: the stream's next poll
    assert len(results) == 99
    assert all(r.status is Status.SUCCEEDED for r in results)
    assert aio88_emulator.count("GET", f"/v1/videos/{task_id}") == 2  # one stream


async def test_last_waiter_leaving_stops_polling(aio88_emulator: Emulator) -> None:
    """When every waiter of an id has gone, the poller forgets it."""
    task_id = aio88_emulator.add_task()
    clock = WatchedClock()
    async with Client("sk-test", base_url=aio88_emulator.base_url) as client:
        async with client.poller(schedule=FAST, clock=clock) as poller:
            async with anyio.create_task_group() as tg:

                async def leaves_at_its_deadline() -> None:
                    with pytest.raises(WaitTimeoutError):
                        await poller.wait(task_id, timeout=0.01)  # before the next poll

                tg.start_soon(leaves_at_its_deadline)
                await settle(poller.stats, clock)
                assert poller.stats().polls == 1
                clock.advance(0.01)
            assert poller.stats().tracked == 0
            clock.advance(1)  # fifty of FAST's intervals
            await settle(poller.stats, clock)
            assert poller.stats().polls == 1
    assert aio88_emulator.count("GET") == 1


async def test_poller_wait_outcomes(aio88_emulator: Emulator) -> None:
    """wait() returns the task, or raises its failure, not-found or timeout."""
    ok = aio88_emulator.add_task("generation", status="succeeded")
    bad = aio88_emulator.add_task(status="failed")
    async with (
        Client("sk-test", base_url=aio88_emulator.base_url, retry=FAST_RETRY) as client,
        client.poller(schedule=FAST) as poller,
    ):
        task = await poller.wait(ok, kind="generation")
        assert task.status is Status.SUCCEEDED
        with pytest.raises(TaskFailedError):
            await poller.wait(bad)
        with pytest.raises(NotFoundError):
            await poller.wait("task_missing")
        with pytest.raises(ValueError, match="not a valid task id"):
            await poller.wait("../x")
        # A task object gives its own kind.
        again = await poller.wait(task)
        assert again.id == ok
    with pytest.raises(RuntimeError, match="not running"):
        await poller.wait(ok)


async def test_tasks_can_be_added_while_running(aio88_emulator: Emulator) -> None:
    """A watch takes more ids while it runs; ids already watched are not doubled."""
    first, second = aio88_emulator.add_task(), aio88_emulator.add_task()
    async with Client("sk-test", base_url=aio88_emulator.base_url) as client:
        async with client.watch([first], schedule=FAST) as outcomes:
            outcomes.add([second, first])
            assert outcomes.pending == 2
            aio88_emulator.complete(first)
            aio88_emulator.complete(second)
            results = await collect(outcomes)
    assert sorted(o.id for o in results) == sorted([first, second])


async def test_bad_ids_become_outcomes(aio88_emulator: Emulator) -> None:
    """An id that cannot be polled is that task's Outcome, not the batch's end."""
    good = aio88_emulator.add_task(status="succeeded")
    async with Client("sk-test", base_url=aio88_emulator.base_url) as client:
        async with client.watch([good, "a/b", 42, "task_missing"], schedule=FAST) as outcomes:  # type: ignore[list-item]
            results = {o.id: o for o in await collect(outcomes)}
    assert results[good].ok
    assert isinstance(results["a/b"].error, ValueError)
    assert isinstance(results["42"].error, TypeError)
    assert isinstance(results["task_missing"].error, NotFoundError)


async def test_refused_key_ends_the_batch(aio88_emulator: Emulator) -> None:
    """401 is fatal: the iteration raises it instead of failing task after task."""
    ids = [aio88_emulator.add_task() for _ in range(20)]
    async with Client("sk-wrong", base_url=aio88_emulator.base_url) as client:
        with pytest.raises(AuthenticationError):
            async with client.watch(ids, schedule=FAST) as outcomes:
                await collect(outcomes)


async def test_leaving_early_cancels_everything(aio88_emulator: Emulator) -> None:
    """Breaking out of watch leaves no task behind (and, warnings being errors, no
    unclosed resource)."""
    ids = [aio88_emulator.add_task() for _ in range(50)]
    aio88_emulator.complete(ids[0])

    def ours() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if "Poller._worker" in t.get_name()]

    async with Client("sk-test", base_url=aio88_emulator.base_url) as client:
        async with client.watch(ids, schedule=FAST, concurrency=8) as outcomes:
            assert len(ours()) == 8  # the workers
            async for outcome in outcomes:
                assert outcome.id == ids[0]
                break
        assert ours() == []


async def test_updates_and_stats(aio88_emulator: Emulator) -> None:
    """on_update sees every change; stats count the work."""
    task_id = aio88_emulator.add_task()
    seen: list[tuple[str, int | None]] = []

    def on_update(task: object) -> None:
        seen.append((task.raw_status, task.progress))  # type: ignore[attr-defined]
        if len(seen) == 1:
            aio88_emulator.set_progress(task_id, 30)
        elif len(seen) == 2:
            aio88_emulator.complete(task_id)

    async with Client("sk-test", base_url=aio88_emulator.base_url) as client:
        async with client.watch([task_id], schedule=FAST, on_update=on_update) as outcomes:
            [outcome] = await collect(outcomes)
            stats = outcomes.stats()
    assert outcome.ok
    assert seen == [("queued", 0), ("in_progress", 30), ("succeeded", 100)]
    assert stats.polls >= 3 and stats.finished == 1 and stats.in_flight == 0


async def test_transient_errors_are_retried_until_success(aio88_emulator: Emulator) -> None:
    """A poll that fails after the client's own retries is rescheduled, not fatal."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("500", times=FAST_RETRY.attempts)  # exhaust one poll's retries
    async with Client("sk-test", base_url=aio88_emulator.base_url, retry=FAST_RETRY) as client:
        poller = client.poller(schedule=Schedule(floor=0.0, first=0))
        async with poller:
            task = await poller.wait(task_id)
            assert poller.stats().errors == 1
    assert task.status is Status.SUCCEEDED


def test_concurrency_must_be_positive() -> None:
    """A poller needs at least one slot."""
    with pytest.raises(ValueError, match="concurrency"):
        Client("k").poller(concurrency=0)


@pytest.mark.parametrize(
    ("anchor", "now_p", "expected"),
    [((0.0, 10), (10.0, 20), 80.0), ((0.0, 50), (50.0, 50), None), ((5.0, 0), (5.0, 10), None)],
)
def test_estimate_eta(
    anchor: tuple[float, int], now_p: tuple[float, int], expected: float | None
) -> None:
    """ETA is the remaining progress over the rate since the anchor."""
    assert estimate_eta(anchor[0], anchor[1], now_p[0], now_p[1]) == expected


def test_schedule_uses_the_estimate() -> None:
    """Far from the finish: poll near it, but never more than `stretch` tiers away;
    at 100 % but not done: poll at the floor."""
    schedule = Schedule(jitter=0.0, aim=0.9, stretch=2.0, floor=1.0)
    assert schedule.next_delay(200, 5, eta=10.0) == pytest.approx(9.0)
    assert schedule.next_delay(200, 5, eta=0.5) == 1.0  # never below the floor
    assert schedule.next_delay(200, 5, eta=1000.0) == 60.0
    assert schedule.next_delay(200, 5, eta=0.0) == 1.0
    blind = Schedule(jitter=0.0, progress_aware=False)
    assert blind.next_delay(200, 5, eta=10.0) == 30.0
    with pytest.raises(ValueError, match="aim"):
        Schedule(aim=0)


async def test_expected_tasks_keep_the_iteration_open(aio88_emulator: Emulator) -> None:
    """expect() holds the iteration open for tasks still being created; forget() of the
    last one ends it even while the iteration is waiting (no hang)."""
    task_id = aio88_emulator.add_task(status="succeeded")
    async with (
        Client("sk-test", base_url=aio88_emulator.base_url) as client,
        client.watch([], schedule=FAST) as outcomes,
    ):
        outcomes.expect(2)
        outcomes.add([task_id], fresh=True)
        first = await outcomes.__anext__()

        async def create_fails_later() -> None:
            await anyio.sleep(0.05)
            outcomes.forget()

        async with anyio.create_task_group() as tg:
            tg.start_soon(create_fails_later)
            with anyio.fail_after(5):
                rest = [o async for o in outcomes]
    assert first.ok and first.id == task_id
    assert rest == [] and outcomes.pending == 0
