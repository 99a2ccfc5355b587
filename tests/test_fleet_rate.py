"""The fleet-wide rate budget (aio88.fleet._rate): two Fleets in one test are two
processes' budgets sharing one row in a real PostgreSQL. Counts and orderings only: the
database's clock says when a pause ended, grants are counted per window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import asyncpg
import pytest

from aio88 import APIConnectionError
from aio88._errors import RateBudgetUnavailableError
from aio88.fleet import Fleet, FleetRateBudget
from aio88.fleet._rate import parse_notice

RATE = 10.0


@pytest.fixture
async def fleets(postgres_dsn: str) -> AsyncIterator[tuple[Fleet, Fleet]]:
    """Two fleets on one database: two processes' seats."""
    async with Fleet(postgres_dsn, lease=3.0) as one, Fleet(postgres_dsn, lease=3.0) as two:
        yield one, two


async def _row(dsn: str, name: str = "k") -> asyncpg.Record:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT *, clock_timestamp() AS db_now FROM aio88_rates WHERE name = $1", name
        )
        assert row is not None
        return row
    finally:
        await connection.close()


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` is true (it reads the database: no event to wait on)."""
    with anyio.move_on_after(8):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)
    pytest.fail(f"never: {what}")


def _most_in_a_window(stamps: list[float], window: float) -> int:
    """The most grants in any ``window`` seconds (closed at both ends)."""
    stamps = sorted(stamps)
    most, first = 0, 0
    for last, stamp in enumerate(stamps):
        while stamp - stamps[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


async def _grants(budgets: list[FleetRateBudget], seconds: float, workers: int) -> list[float]:
    """Every budget's ``workers`` callers take turns for ``seconds``; when each got one."""
    stamps: list[float] = []

    async def worker(budget: FleetRateBudget) -> None:
        while True:
            await budget.wait_turn()
            stamps.append(time.monotonic())

    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as group:
            for budget in budgets:
                for _ in range(workers):
                    group.start_soon(worker, budget)
    return stamps


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_two_processes_stay_within_the_rate_and_one_burst(
    fleets: tuple[Fleet, Fleet],
) -> None:
    one, _ = fleets
    budgets = [f.rate_budget("k", RATE, time.monotonic) for f in fleets]
    stamps = await _grants(budgets, 4.0, workers=5)
    assert len(stamps) > RATE  # both took turns, more than one burst's worth
    # the burst is one second's worth of the rate, fleet-wide
    assert _most_in_a_window(stamps, 1.0) <= RATE * 1.0 + RATE
    assert _most_in_a_window(stamps, 2.0) <= RATE * 2.0 + RATE
    assert one.rate_budget("k", RATE, time.monotonic) is budgets[0]  # one budget per key


async def test_a_quick_burst_is_bounded_too(fleets: tuple[Fleet, Fleet]) -> None:
    budgets = [f.rate_budget("k", RATE, time.monotonic) for f in fleets]
    stamps = await _grants(budgets, 1.2, workers=4)
    assert _most_in_a_window(stamps, 1.0) <= RATE * 1.0 + RATE


async def test_blocks_save_round_trips_and_stay_bounded(fleets: tuple[Fleet, Fleet]) -> None:
    rate = 200.0
    budgets = [f.rate_budget("fast", rate, time.monotonic) for f in fleets]
    assert budgets[0].block == 10  # ceil(200 * 0.05)
    stamps = await _grants(budgets, 1.5, workers=20)
    assert _most_in_a_window(stamps, 1.0) <= rate * 1.0 + rate
    round_trips = sum(b.round_trips for b in budgets)
    assert round_trips < len(stamps) / 2


async def test_a_429_in_one_process_pauses_the_other(
    fleets: tuple[Fleet, Fleet], postgres_dsn: str
) -> None:
    one, two = fleets
    first = one.rate_budget("k", RATE, time.monotonic)
    second = two.rate_budget("k", RATE, time.monotonic)
    await first.wait_turn()
    await second.wait_turn()
    now = time.monotonic()
    assert first.rate_limited(now, 1.0, now - 0.1)  # a new signal
    assert first.paused_until >= now + 1.0  # paused here at once
    assert first.recovering

    async def heard() -> bool:
        return second.paused_until > time.monotonic()

    await _until(heard, "the other process heard of the pause")
    assert second.recovering
    await second.wait_turn()
    row = await _row(postgres_dsn)
    assert row["db_now"] >= row["paused_until"]  # it waited out the pause, in the db's time
    assert row["amount"] == RATE / 2  # halved once


async def test_a_process_that_missed_the_notification_sees_the_pause(
    fleets: tuple[Fleet, Fleet], postgres_dsn: str
) -> None:
    one, _ = fleets
    budget = one.rate_budget("k", RATE, time.monotonic)
    await budget.wait_turn()  # the row exists; then a pause is stored without a NOTIFY
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(
            "UPDATE aio88_rates SET paused_until = clock_timestamp() + interval '0.5 s'"
        )
    finally:
        await connection.close()
    for _ in range(int(RATE) + 1):  # past what the first block held: a new block
        await budget.wait_turn()
    row = await _row(postgres_dsn)
    assert row["db_now"] >= row["paused_until"]


async def test_halving_once_per_window(fleets: tuple[Fleet, Fleet], postgres_dsn: str) -> None:
    one, two = fleets
    first = one.rate_budget("k", RATE, time.monotonic)
    second = two.rate_budget("k", RATE, time.monotonic)
    await first.wait_turn()
    now = time.monotonic()
    sent_before = now - 0.5
    assert first.rate_limited(now, 0.1, now - 0.05)

    async def halved() -> bool:
        row = await _row(postgres_dsn)
        return bool(row["amount"] == RATE / 2 and second.paused_until >= now)

    await _until(halved, "the first 429 halved the rate and the other process heard")
    updated = (await _row(postgres_dsn))["updated_at"]
    # the other process's 429 is for a request sent before that signal: in flight
    # already, it only extends the pause (judged here, and in the database's time)
    assert not second.rate_limited(time.monotonic(), 0.1, sent_before)

    async def landed() -> bool:
        return bool((await _row(postgres_dsn))["updated_at"] > updated)

    await _until(landed, "the second 429 reached the database")
    assert (await _row(postgres_dsn))["amount"] == RATE / 2
    # a 429 for a request sent after the signal halves again
    later = time.monotonic()
    assert second.rate_limited(later, 0.1, later)

    async def halved_again() -> bool:
        return bool((await _row(postgres_dsn))["amount"] < RATE / 2)

    await _until(halved_again, "a new window's 429 halved the rate again")


async def test_successes_bring_the_rate_back(
    fleets: tuple[Fleet, Fleet], postgres_dsn: str
) -> None:
    one, _ = fleets
    budget = one.rate_budget("k", RATE, time.monotonic)
    await budget.wait_turn()
    now = time.monotonic()
    budget.rate_limited(now, 0.0, now)

    async def halved() -> bool:
        return bool((await _row(postgres_dsn))["amount"] == RATE / 2)

    await _until(halved, "the 429 halved the rate")
    for _ in range(20):
        budget.succeeded(time.monotonic())

    async def grown() -> bool:
        row = await _row(postgres_dsn)
        return bool(row["amount"] > RATE / 2 and row["amount_since"] > row["signalled_at"])

    await _until(grown, "the successes reached the database")


async def test_without_a_rate_only_the_pause_applies(
    fleets: tuple[Fleet, Fleet], postgres_dsn: str
) -> None:
    one, two = fleets
    first = one.rate_budget("open", None, time.monotonic)
    second = two.rate_budget("open", None, time.monotonic)
    for _ in range(50):
        await second.wait_turn()  # no token to take: no round trip
    assert second.round_trips == 0
    assert not second.recovering
    second.succeeded(time.monotonic())  # nothing to give back
    now = time.monotonic()
    assert first.rate_limited(now, 0.5, now)
    assert not first.recovering  # no rate to lower

    async def heard() -> bool:
        return second.paused_until > time.monotonic()

    await _until(heard, "the other process heard of the pause")
    await second.wait_turn()
    row = await _row(postgres_dsn, "open")
    assert row["db_now"] >= row["paused_until"]
    assert row["amount"] is None


async def test_a_reconnect_rereads_the_pause(
    fleets: tuple[Fleet, Fleet], postgres_dsn: str
) -> None:
    """A pause stored while the LISTEN connection was down is read after reconnecting."""
    one, _ = fleets
    budget = one.rate_budget("open", None, time.monotonic)
    await budget.wait_turn()
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(
            "INSERT INTO aio88_rates (name, paused_until) "
            "VALUES ('open', clock_timestamp() + interval '5 s')"
        )
        await connection.execute("SELECT pg_terminate_backend($1)", one.listener.backend_pid)
    finally:
        await connection.close()

    async def heard() -> bool:
        return budget.paused_until > time.monotonic() + 1

    await _until(heard, "the reconnect re-read the pause")


async def test_a_database_gone_away_is_a_connection_error(postgres_dsn: str) -> None:
    """Nothing was sent: a poll backs off and tries again, a create is known not made."""
    fleet = Fleet(postgres_dsn, lease=3.0)
    await fleet.start()
    budget = fleet.rate_budget("k", RATE, time.monotonic)
    await fleet.aclose()
    with pytest.raises(APIConnectionError, match="rate token") as raised:
        await budget.wait_turn()
    assert isinstance(raised.value, RateBudgetUnavailableError)
    assert raised.value.request_sent is False and raised.value.__cause__ is not None
    # Within the backoff that follows, the next request is refused without a new try of
    # the database (no cause: nothing was attempted).
    with pytest.raises(RateBudgetUnavailableError) as again:
        await budget.wait_turn()
    assert again.value.__cause__ is None and again.value.request_sent is False
    await budget.refresh()  # logged, not raised
    now = time.monotonic()
    budget.rate_limited(now, 0.0, now)  # nothing to tell anyone: dropped quietly


def test_a_bad_rate_or_notice_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        FleetRateBudget(None, "k", 0.0, time.monotonic, lambda c: None)  # type: ignore[arg-type]
    assert parse_notice("not json") is None
    assert parse_notice('{"name": "k"}') is None
    assert "malformed rate notification" in caplog.text
