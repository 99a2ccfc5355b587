"""The fleet's task leases (``aio88.fleet._leases.FleetLeases``) against a real PostgreSQL.

Each :class:`Member` is one process of a fleet as ``Fleet`` builds it: its own pool, the
leases, the fleet's LISTEN connection (``_listen.Listener``) routing both channels to them,
and a heartbeat calling ``renew()`` every ``lease / 3``. Two or three members share one
fresh database. Statements are counted with asyncpg's query logger on each pool's
connections (only those that touch the fleet's rows or channels).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import pytest
from postgres import database_outage

pytest.importorskip("asyncpg", reason="needs asyncpg (the aio88[postgres] extra)")

import asyncpg

from aio88._coordination import TaskLeases
from aio88.fleet import FleetError
from aio88.fleet._leases import FINISHED_CHANNEL, HINT_CHANNEL, FleetLeases
from aio88.fleet._listen import Listener
from aio88.fleet._outage import OutageLog
from aio88.fleet._schema import migrate
from aio88.testing import ManualClock


def _conforms(leases: FleetLeases) -> TaskLeases:
    """What the poller is written against (checked by mypy)."""
    return leases


#: A short lease, so that a dead member's tasks are taken over within a second.
LEASE = 0.6
#: A lease long enough that no heartbeat comes during a test: for counting statements.
QUIET = 30.0


@pytest.fixture
async def dsn(postgres_dsn: str) -> str:
    """A fresh database with the fleet's schema."""
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await migrate(connection)
    finally:
        await connection.close()
    return postgres_dsn


class Member:
    """One process of the fleet: a pool, its :class:`FleetLeases`, a LISTEN connection and
    a heartbeat; records what its subscriber hears and the statements it sends."""

    def __init__(self, dsn: str, name: str, *, lease: float = LEASE, listen: bool = True):
        self.dsn = dsn
        self.name = name
        self.lease_seconds = lease
        self.listen = listen
        self.statements: list[str] = []
        self.finished: list[tuple[str, str, bytes]] = []
        self.hints: list[str] = []
        self.changed = asyncio.Event()
        self.pool: asyncpg.Pool[Any] | None = None
        self.listener: Listener | None = None
        self._beat: asyncio.Task[None] | None = None
        self._leases: FleetLeases | None = None

    @property
    def leases(self) -> FleetLeases:
        """This member's leases."""
        assert self._leases is not None
        return self._leases

    async def __aenter__(self) -> Member:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2, init=self._init)
        self._leases = FleetLeases(self.pool, process_id=self.name, lease=self.lease_seconds)
        self.leases.subscribe(self._on_finished, self._on_hint)
        await self.leases.start()
        if self.listen:
            self.listener = Listener(lambda: asyncpg.connect(self.dsn), check_every=0.2)
            for channel in (FINISHED_CHANNEL, HINT_CHANNEL):
                self.listener.add(channel, self._router(channel))
            self.listener.on_reconnect(self.leases.on_reconnect)
            await self.listener.start()
        self._beat = asyncio.create_task(self._heartbeat())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(clean=True)

    async def stop(self, *, clean: bool) -> None:
        """Leave the fleet: cleanly (release every lease), or as a process that died (the
        heartbeat stops, the connections drop, nothing is released)."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
        if self._leases is not None and clean:
            await self.leases.release_all()
        if self.listener is not None:
            await self.listener.aclose()
            self.listener = None
        if self._leases is not None:
            await self.leases.aclose()
        if self.pool is not None:
            if clean:
                await self.pool.close()
            else:
                self.pool.terminate()
            self.pool = None

    async def _init(self, connection: asyncpg.Connection[Any]) -> None:
        def record(query: Any) -> None:
            if "aio88_" in query.query:
                self.statements.append(query.query)

        connection.add_query_logger(record)

    def _router(self, channel: str) -> Callable[[str], None]:
        return lambda payload: self.leases.on_notify(channel, payload)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            await self.leases.renew()

    def _on_finished(self, task_id: str, kind: str, task_json: bytes) -> None:
        self.finished.append((task_id, kind, task_json))
        self.changed.set()

    def _on_hint(self, task_id: str) -> None:
        self.hints.append(task_id)
        self.changed.set()

    async def sent(self) -> int:
        """How many statements this member sent so far (asyncpg calls its query loggers
        soon after each statement, not at once)."""
        for _ in range(3):
            await asyncio.sleep(0)
        return len(self.statements)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds (the test's timeout bounds the wait)."""
        while not condition():
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.02)


async def owner_of(dsn: str, task_id: str) -> tuple[str | None, bool]:
    """The row's owner and whether it is finished (``(None, False)`` without a row)."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT owner, finished_at IS NOT NULL AS done FROM aio88_tasks WHERE task_id = $1",
            task_id,
        )
    finally:
        await connection.close()
    return (None, False) if row is None else (row["owner"], row["done"])


@contextlib.asynccontextmanager
async def members(dsn: str, *names: str, **options: Any) -> AsyncIterator[list[Member]]:
    """Several members of one fleet, left cleanly at the end."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Member(dsn, name, **options)) for name in names]


async def test_one_claims_the_other_does_not(dsn: str) -> None:
    async with members(dsn, "a", "b", lease=QUIET) as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        assert not await b.leases.claim("t1", "video")
        assert a.leases.holds("t1")
        assert not b.leases.holds("t1")
        assert await owner_of(dsn, "t1") == ("a", False)
        # a's lease is known to be valid: b answers again without a round trip
        sent = await b.sent()
        assert not await b.leases.claim("t1", "video")
        assert await b.sent() == sent
        # and the holder answers from what it knows, too
        sent = await a.sent()
        assert await a.leases.claim("t1", "video")
        assert await a.sent() == sent


async def test_concurrent_claims_have_one_winner(dsn: str) -> None:
    async with members(dsn, "a", "b", "c") as group:
        ids = [f"t{n}" for n in range(50)]
        for member in group:
            for task_id in ids:
                member.leases.track(task_id, "generation")
        answers = await asyncio.gather(
            *(m.leases.claim(task_id, "generation") for task_id in ids for m in group)
        )
        for n, task_id in enumerate(ids):
            assert sum(answers[n * 3 : n * 3 + 3]) == 1, task_id
            assert sum(m.leases.holds(task_id) for m in group) == 1


async def test_finished_by_the_holder_wakes_the_others(dsn: str) -> None:
    body = b'{"id":"t1","status":"succeeded","\xff":1}'
    async with members(dsn, "a", "b", "c") as (a, b, c):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        for member in (b, c):
            member.leases.track("t1", "video")
        assert not await b.leases.claim("t1", "video")
        a.leases.finished("t1", "video", body)
        a.leases.untrack("t1")  # the poller's order: finished, then untrack
        await b.until(lambda: bool(b.finished))
        await c.until(lambda: bool(c.finished))
        assert b.finished == [("t1", "video", body)]
        assert c.finished == [("t1", "video", body)]
        assert a.finished == []  # its own end is not reported back to it
        assert not b.leases.holds("t1")
        assert not await b.leases.claim("t1", "video")  # finished: nobody polls it
        assert await owner_of(dsn, "t1") == ("a", True)


async def test_finished_by_a_non_holder_writes_nothing(dsn: str) -> None:
    async with members(dsn, "a", "b") as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        assert not await b.leases.claim("t1", "video")
        b.leases.finished("t1", "video", b"from b")
        await b.leases.renew()  # a pass: whatever b queued is sent by now
        assert await owner_of(dsn, "t1") == ("a", False)
        # the holder's end is the one everybody gets
        a.leases.finished("t1", "video", b"from a")
        await b.until(lambda: bool(b.finished))
        assert b.finished == [("t1", "video", b"from a")]
        assert a.finished == []


async def test_first_writer_wins(dsn: str) -> None:
    """A holder that lost its lease meanwhile (the row went to another) writes nothing."""
    async with members(dsn, "a", "b") as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        connection = await asyncpg.connect(dsn)
        try:  # a's lease runs out early, as if a had been frozen, and b takes the task
            await connection.execute(
                "UPDATE aio88_tasks SET lease_until = now() - interval '1 second'"
            )
        finally:
            await connection.close()
        b.leases.on_notify(HINT_CHANNEL, "t1")  # b tries now, not at the old expiry
        assert await b.leases.claim("t1", "video")
        assert a.leases.holds("t1")  # a still believes it holds it
        a.leases.finished("t1", "video", b"stale")
        await a.leases.renew()
        assert await owner_of(dsn, "t1") == ("b", False)  # a wrote nothing
        b.leases.finished("t1", "video", b"fresh")
        await b.leases.renew()
        assert await owner_of(dsn, "t1") == ("b", True)


async def test_track_of_a_finished_task_reports_it(dsn: str) -> None:
    async with members(dsn, "a") as (a,):
        a.leases.track("t1", "generation")
        assert await a.leases.claim("t1", "generation")
        a.leases.finished("t1", "generation", b"done")
        a.leases.untrack("t1")
        await a.leases.renew()
        async with members(dsn, "late") as (late,):
            late.leases.track("t1", "generation")
            await late.until(lambda: bool(late.finished))
            assert late.finished == [("t1", "generation", b"done")]
            assert not await late.leases.claim("t1", "generation")


async def test_a_dead_holders_task_is_taken_over(dsn: str) -> None:
    async with members(dsn, "b") as (b,):
        a = Member(dsn, "a")
        await a.__aenter__()
        try:
            a.leases.track("t1", "video")
            assert await a.leases.claim("t1", "video")
            b.leases.track("t1", "video")
            assert not await b.leases.claim("t1", "video")
        finally:
            a_leases = a.leases
            await a.stop(clean=False)  # dies: no release, no more renewals
        await b.until(lambda: b.leases.holds("t1"))
        # by the time b holds it, a (had it lived on without renewing) no longer counted
        # on it: never two holders
        assert not a_leases.holds("t1")
        assert await owner_of(dsn, "t1") == ("b", False)


async def test_renewal_keeps_the_lease(dsn: str) -> None:
    """Held for several leases by the heartbeat alone; the other member never gets it."""
    async with members(dsn, "a", "b") as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        renewals = 0
        while renewals < 16:  # two leases of b's heartbeats trying to take it over
            await a.leases.renew()
            await b.leases.renew()
            renewals += 1
            await asyncio.sleep(LEASE / 8)
            assert a.leases.holds("t1")
            assert not b.leases.holds("t1")


async def test_release_all_frees_everything(dsn: str) -> None:
    async with members(dsn, "a", "b") as (a, b):
        ids = [f"t{n}" for n in range(20)]
        for task_id in ids:
            a.leases.track(task_id, "video")
        assert all([await a.leases.claim(task_id, "video") for task_id in ids])
        for task_id in ids:
            b.leases.track(task_id, "video")
        assert not any([await b.leases.claim(task_id, "video") for task_id in ids])
        await a.leases.release_all()
        assert not any(a.leases.holds(task_id) for task_id in ids)
        # none is a's (b's heartbeat, every LEASE / 3, may have taken some already)
        owners = {await owner_of(dsn, task_id) for task_id in ids}
        assert owners <= {(None, False), ("b", False)}
        # the release is announced: b claims at once, not at a's old expiry
        await b.until(lambda: len(set(b.hints) & set(ids)) == len(ids))
        assert all([await b.leases.claim(task_id, "video") for task_id in ids])


async def test_untrack_releases_the_lease(dsn: str) -> None:
    async with members(dsn, "a", "b") as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        assert not await b.leases.claim("t1", "video")
        a.leases.untrack("t1")
        assert not a.leases.holds("t1")
        await b.until(lambda: "t1" in b.hints)
        assert await b.leases.claim("t1", "video")
        assert await owner_of(dsn, "t1") == ("b", False)


async def test_reconnect_rereads_tracked_tasks(dsn: str) -> None:
    async with (
        members(dsn, "a", lease=QUIET) as (a,),
        members(dsn, "b", lease=QUIET, listen=False) as (b,),
    ):
        a.leases.track("t1", "video")
        a.leases.track("t2", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        b.leases.track("t2", "video")
        a.leases.finished("t1", "video", b"while b was deaf")
        await a.leases.renew()
        assert await owner_of(dsn, "t1") == ("a", True)
        assert b.finished == []  # b heard nothing
        sent = await b.sent()
        await b.leases.on_reconnect()
        assert b.finished == [("t1", "video", b"while b was deaf")]
        assert await b.sent() == sent + 1  # one read for every tracked id


async def test_a_lost_listen_connection_loses_no_end(dsn: str) -> None:
    async with members(dsn, "a", "b") as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        assert b.listener is not None
        listener = b.listener
        connection = await asyncpg.connect(dsn)
        try:
            pid = listener.backend_pid
            await connection.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await connection.close()
        a.leases.finished("t1", "video", b"end")
        await b.until(lambda: bool(b.finished))  # by notification or by the re-read
        assert b.finished == [("t1", "video", b"end")]
        await b.until(lambda: listener.reconnects >= 1)


async def test_ten_thousand_tracks_are_a_few_statements(dsn: str) -> None:
    ids = [f"task_{n:05}" for n in range(10_000)]
    async with members(dsn, "a", "b", lease=QUIET) as (a, b):
        for task_id in ids:
            a.leases.track(task_id, "video")
        assert await a.leases.claim(ids[-1], "video")  # joins the batch under way
        assert all(a.leases.holds(task_id) for task_id in ids)
        assert 1 <= await a.sent() <= 3
        for task_id in ids:
            b.leases.track(task_id, "video")
        assert not await b.leases.claim(ids[0], "video")
        assert not any(b.leases.holds(task_id) for task_id in ids)
        assert 1 <= await b.sent() <= 3
        # one heartbeat renews them all in a couple of statements (b's retries nothing:
        # a's leases are known to be valid)
        for member in (a, b):
            before = await member.sent()
            await member.leases.renew()
            assert await member.sent() - before <= 3
        # and 10,000 untracks are a couple of releases
        before = await a.sent()
        for task_id in ids:
            a.leases.untrack(task_id)
        await a.leases.renew()
        assert 1 <= await a.sent() - before <= 3
        assert await owner_of(dsn, ids[1234]) == (None, False)


async def test_a_hint_reaches_every_member(dsn: str) -> None:
    async with members(dsn, "a", "b", "c", lease=QUIET) as (a, b, c):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.hint("t1")  # a callback for t1 reached b, which does not poll it
        await a.until(lambda: "t1" in a.hints)
        await c.until(lambda: "t1" in c.hints)
        # the holder hears of a callback locally: it sends nothing
        sent = await a.sent()
        a.leases.hint("t1")
        await a.leases.renew()
        assert not [s for s in a.statements[sent:] if "aio88_hint" in s]
        assert await a.sent() - sent == 1  # the renewal


async def test_database_errors_are_retried_on_the_next_beat(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with members(dsn, "a", "b", lease=2.0) as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        assert not await b.leases.claim("t1", "video")
        admin = await asyncpg.connect(dsn)
        try:
            with caplog.at_level(logging.WARNING, logger="aio88.fleet"):
                # every statement on the table fails for a moment (much less than a lease)
                await admin.execute("ALTER TABLE aio88_tasks RENAME TO aio88_tasks_away")
                a.leases.finished("t1", "video", b"kept")
                a.leases.untrack("t1")
                await a.until(lambda: any(r.name == "aio88.fleet" for r in caplog.records))
                await admin.execute("ALTER TABLE aio88_tasks_away RENAME TO aio88_tasks")
        finally:
            await admin.close()
        assert all(r.levelno == logging.WARNING for r in caplog.records)
        # the next heartbeat sends what failed
        await b.until(lambda: bool(b.finished))
        assert b.finished == [("t1", "video", b"kept")]
        assert await owner_of(dsn, "t1") == ("a", True)


# An outage lasts as long as the LISTEN connection's reconnect backoff (up to 5 s) makes
# it: seconds, more on a loaded machine.
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_hint_sent_while_the_database_is_down_arrives_after(dsn: str) -> None:
    """A callback reached a while PostgreSQL was down: its hint is kept and reaches b
    (which holds the task) once the database is back, b's LISTEN connection included."""
    async with members(dsn, "a", "b") as (a, b):
        b.leases.track("t1", "video")
        assert await b.leases.claim("t1", "video")
        assert b.listener is not None
        listener = b.listener
        async with database_outage(dsn):
            for _ in range(3):  # a has tried to send it (and failed), heartbeats later
                await a.leases.renew()
            a.leases.hint("t1")
            await a.leases.renew()
            await a.leases.renew()
        await b.until(lambda: listener.reconnects >= 1)
        await listening(dsn, b)
        await a.leases.renew()  # a heartbeat soon after the outage sends it again
        await b.until(lambda: "t1" in b.hints)


#: A small backlog for the test (the real one, 10,000, is the same code at 100x the time).
BACKLOG = 200
#: A short late window for the test (the real one is 15 s).
LATE = 1.0
#: What :func:`listening` notifies.
PROBE = "probe"


async def listening(dsn: str, member: Member) -> None:
    """Wait until ``member``'s LISTEN connection hears the fleet again (a probe hint)."""
    admin = await asyncpg.connect(dsn)
    try:
        while PROBE not in member.hints:
            await admin.execute("SELECT pg_notify($1, $2)", HINT_CHANNEL, PROBE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(member.until(lambda: PROBE in member.hints), 0.2)
    finally:
        await admin.close()


# An outage lasts as long as the LISTEN connection's reconnect backoff (up to 5 s) makes
# it: seconds, more on a loaded machine.
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_hints_kept_through_an_outage_are_bounded(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aio88.fleet._leases.FLEET_HINT_BACKLOG", BACKLOG)
    monkeypatch.setattr("aio88.fleet._leases.FLEET_LATE_HINTS", LATE)
    async with members(dsn, "a", "b", lease=QUIET) as (a, b):
        async with database_outage(dsn):
            for n in range(BACKLOG + 5):
                a.leases.hint(f"t{n}")
            a.leases.hint("t3")  # hinted again: kept once, as the newest
            await a.leases.renew()
            assert not b.hints
        # the oldest went: t0 to t4 for the last 5, then t5 for t3 hinted again
        expected = {"t3", *(f"t{n}" for n in range(6, BACKLOG + 5))}
        await listening(dsn, b)  # b's LISTEN is back (its reconnect backoff is over)
        await a.leases.renew()  # within the late window: sent again, b hears them all
        await b.until(lambda: set(b.hints) - {PROBE} == expected)
        # After the window, never again.
        await asyncio.sleep(LATE + 0.1)
        await a.leases.renew()
        sent = await a.sent()
        await a.leases.renew()
        assert not [s for s in a.statements[sent:] if "aio88_hint" in s]
        # each a few times at most (one send per beat or reconnect in the window)
        assert max(Counter(b.hints).values()) <= 4


def test_an_outage_is_logged_now_and_then(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    outage_log = OutageLog(logging.getLogger("aio88.fleet"), every=30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="aio88.fleet"):
        outage_log.ok()  # no outage: nothing to say
        for _ in range(130):  # 100 failures a second for 65 s
            for _ in range(50):
                outage_log.failed(ConnectionRefusedError("refused"))
            clock.advance(0.5)
        outage_log.ok()
        outage_log.ok()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages
    assert "the database failed (ConnectionRefusedError: refused)" in messages[0]
    assert "still fails after 30 s" in messages[1]
    assert "still fails after 60 s" in messages[2]
    assert messages[3] == "aio88 fleet: the fleet's database is back after 65 s (6500 failures)"


async def test_a_failing_subscriber_does_not_stop_the_others(dsn: str) -> None:
    async with members(dsn, "a", "b") as (a, b):

        def broken(task_id: str, kind: str, task_json: bytes) -> None:
            raise RuntimeError("a bug in one subscriber")

        b.leases.subscribe(broken, lambda task_id: None)
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        a.leases.finished("t1", "video", b"x")
        await b.until(lambda: bool(b.finished))
        assert b.finished == [("t1", "video", b"x")]


async def test_through_the_fleet(postgres_dsn: str) -> None:
    """The same, wired as ``aio88.fleet.Fleet`` wires it: its pool, LISTEN connection and
    heartbeat; a fleet's clean exit hands its tasks to the others at once."""
    from aio88.fleet import Fleet

    heard: list[tuple[str, str, bytes]] = []
    hints: list[str] = []
    ended, released = asyncio.Event(), asyncio.Event()

    def on_finished(task_id: str, kind: str, task_json: bytes) -> None:
        heard.append((task_id, kind, task_json))
        ended.set()

    def on_hint(task_id: str) -> None:
        hints.append(task_id)
        if task_id == "t2":
            released.set()

    async with Fleet(postgres_dsn, lease=QUIET) as a, Fleet(postgres_dsn, lease=QUIET) as b:
        b.leases.subscribe(on_finished, on_hint)
        for task_id in ("t1", "t2"):
            a.leases.track(task_id, "video")
            assert await a.leases.claim(task_id, "video")
            b.leases.track(task_id, "video")
            assert not await b.leases.claim(task_id, "video")
        a.leases.finished("t1", "video", b"one")
        a.leases.untrack("t1")
        await ended.wait()
        assert heard == [("t1", "video", b"one")]
        await a.aclose()  # a clean exit: t2 is released and announced
        await released.wait()
        assert await b.leases.claim("t2", "video")
        assert await owner_of(postgres_dsn, "t2") == (b.process_id, False)


async def test_tracking_is_counted_per_poller(dsn: str) -> None:
    """Two pollers of one process wait on a task: the first to drop it keeps the lease
    for the other; the last one releases it."""
    async with members(dsn, "a", "b") as (a, b):
        a.leases.track("t1", "video")
        a.leases.track("t1", "video")  # a second poller of the same process
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        a.leases.untrack("t1")  # the first poller is done with it
        await a.leases.renew()  # a pass: a release would have been sent by now
        assert a.leases.holds("t1")
        assert await owner_of(dsn, "t1") == ("a", False)
        assert not [s for s in a.statements if "SET owner = NULL" in s]
        a.leases.untrack("t1")  # the second one: now nobody here waits on it
        assert not a.leases.holds("t1")
        await b.until(lambda: "t1" in b.hints)
        assert await b.leases.claim("t1", "video")
        # a third untrack is one too many: it changes nothing
        a.leases.untrack("t1")
        assert await owner_of(dsn, "t1") == ("b", False)


async def test_an_end_recorded_here_reaches_the_other_pollers_here(dsn: str) -> None:
    async with members(dsn, "a", lease=QUIET) as (a,):
        other: list[tuple[str, str, bytes]] = []
        a.leases.subscribe(lambda *end: other.append(end), lambda task_id: None)
        a.leases.track("t1", "video")  # the poller that will see the end
        a.leases.track("t1", "video")  # another poller of the process
        assert await a.leases.claim("t1", "video")
        a.leases.finished("t1", "video", b"end")
        # not during the call: the recording poller drops the task right after it and
        # must not be finished twice
        assert a.finished == other == []
        a.leases.untrack("t1")
        await asyncio.sleep(0)
        assert a.finished == other == [("t1", "video", b"end")]
        # a poller here that starts waiting on it now hears of it one turn later too
        a.leases.track("t1", "video")
        assert len(other) == 1
        await asyncio.sleep(0)
        assert other == [("t1", "video", b"end")] * 2
        # and so does one still claiming it (it missed the end somehow)
        assert not await a.leases.claim("t1", "video")
        await asyncio.sleep(0)
        assert len(other) == 3
        for _ in range(2):
            a.leases.untrack("t1")
        await a.leases.renew()
        assert await owner_of(dsn, "t1") == ("a", True)  # recorded once, not released
        assert len([s for s in a.statements if "finished_at = clock_timestamp()" in s]) == 1


async def test_one_poller_alone_is_not_told_its_own_end(dsn: str) -> None:
    async with members(dsn, "a", lease=QUIET) as (a,):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        a.leases.finished("t1", "video", b"end")
        a.leases.untrack("t1")
        await a.leases.renew()
        assert await owner_of(dsn, "t1") == ("a", True)
        assert a.finished == []


async def test_two_pollers_of_one_client_share_the_end(postgres_dsn: str) -> None:
    """``client.watch()`` and ``client.poller()`` (here: two pollers) in one process wait
    on one task. The one that polls often sees it end; the other, polling hourly, hears
    of it from the fleet at once."""
    import anyio

    from aio88 import Client, Schedule, Status, Video
    from aio88.fleet import Fleet
    from aio88.testing import Emulator

    async with (
        Emulator(duration=None) as emu,
        Fleet(postgres_dsn, lease=QUIET) as fleet,
        Client("sk-test", base_url=emu.base_url, fleet=fleet) as client,
        client.poller(schedule=Schedule.fixed(3600), timeout=None) as slow,
        client.poller(schedule=Schedule.fixed(0.05), timeout=None) as fast,
    ):
        task_id = emu.add_task()
        path = f"/v1/videos/{task_id}"

        def polls() -> int:
            return sum(1 for r in emu.requests if r.method == "GET" and r.path == path)

        results: list[Video] = []

        async def wait(poller: Any) -> None:
            results.append(await poller.wait(task_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, slow)
            while polls() < 1:  # noqa: ASYNC110 - state in the emulator
                await anyio.sleep(0.01)
            tg.start_soon(wait, fast)
            while polls() < 3:  # noqa: ASYNC110 - state in the emulator
                await anyio.sleep(0.01)
            emu.complete(task_id)
        assert [task.status for task in results] == [Status.SUCCEEDED] * 2
        assert fleet.leases.holds(task_id) is False


async def release_during_a_claim(dsn: str, a: Member, b: Member, claim: Awaitable[bool]) -> bool:
    """b claims t1 (which a holds) and t2 in one statement, and a releases t1 after that
    statement's snapshot was taken, its hint reaching b before the answer; returns what
    ``claim`` (awaited meanwhile) returned.

    Done with a lock, no timing: another connection inserts t2 without committing, so the
    claim's insert of t2 waits for it; meanwhile a releases t1; then the insert is rolled
    back and the claim answers from its snapshot, in which a still holds t1."""
    blocker = await asyncpg.connect(dsn)
    admin = await asyncpg.connect(dsn)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(
            "INSERT INTO aio88_tasks (task_id, kind, owner, lease_until)"
            " VALUES ('t2', 'video', 'blocker', now())"
        )
        b.leases.track("t1", "video")
        b.leases.track("t2", "video")
        pending = asyncio.ensure_future(claim)
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE '%inserted AS%'"
        )
        while not await admin.fetchval(waiting):  # noqa: ASYNC110 - state in the database
            await asyncio.sleep(0.01)
        a.leases.untrack("t1")  # released, and announced, after b's snapshot
        await b.until(lambda: "t1" in b.hints)
        await transaction.rollback()
        return await pending
    finally:
        await blocker.close()
        await admin.close()


def claims_sent(member: Member, since: int) -> int:
    """How many claim statements ``member`` sent after its first ``since`` statements."""
    return len([s for s in member.statements[since:] if "inserted AS" in s])


async def test_a_release_during_a_claim_is_not_missed(dsn: str) -> None:
    """The claim's answer still shows the old lease, but the release's hint came before
    it: the claim asks once more, at once, instead of waiting out that lease."""
    async with members(dsn, "a", "b", lease=QUIET) as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        sent = await b.sent()
        assert await release_during_a_claim(dsn, a, b, b.leases.claim("t1", "video"))
        assert claims_sent(b, sent) == 2  # the one held up, and one more
        assert await owner_of(dsn, "t1") == ("b", False)


async def test_a_release_during_a_background_claim_is_not_missed(dsn: str) -> None:
    """The same race when nobody waited on t1's answer (the claim that ``track`` queues,
    or the heartbeat's): the old lease it saw is not trusted, so the next claim() asks."""
    async with members(dsn, "a", "b", lease=QUIET) as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        # the claim of t2 joins the held-up statement: it returns with its answer
        assert await release_during_a_claim(dsn, a, b, b.leases.claim("t2", "video"))
        assert not b.leases.holds("t1")
        sent = await b.sent()
        assert await b.leases.claim("t1", "video")
        assert claims_sent(b, sent) == 1
        assert await owner_of(dsn, "t1") == ("b", False)


async def test_a_hint_makes_the_next_claim_ask(dsn: str) -> None:
    """A known valid lease answers claims without a round trip; a hint (perhaps a
    release) makes the next one ask, and the answer is trusted again."""
    async with members(dsn, "a", "b", lease=QUIET) as (a, b):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        b.leases.track("t1", "video")
        assert not await b.leases.claim("t1", "video")
        sent = await b.sent()
        assert not await b.leases.claim("t1", "video")
        assert await b.sent() == sent
        b.leases.on_notify(HINT_CHANNEL, "t1")  # a callback for t1, not a release
        assert not await b.leases.claim("t1", "video")  # a still holds it
        assert claims_sent(b, sent) == 1  # one round trip, not a second one
        assert not await b.leases.claim("t1", "video")
        assert claims_sent(b, sent) == 1


async def test_claims_after_the_fleet_closed_raise(dsn: str) -> None:
    """A poller still running after its fleet closed (the wrong nesting) must not wait
    forever on claims that always say no: it hears why."""
    async with members(dsn, "a", lease=QUIET) as (a,):
        a.leases.track("t1", "video")
        assert await a.leases.claim("t1", "video")
        await a.leases.release_all()
        with pytest.raises(FleetError, match=r"the fleet was closed.*async with Client\(fleet"):
            await a.leases.claim("t1", "video")
        with pytest.raises(FleetError):
            await a.leases.claim("t2", "video")
        # the poller's own exit still works
        a.leases.track("t3", "video")
        assert not a.leases.holds("t3")
        for task_id in ("t1", "t2", "t3"):
            a.leases.untrack(task_id)
        a.leases.finished("t1", "video", b"after")  # ignored
        a.leases.hint("t1")
    assert await owner_of(dsn, "t1") == (None, False)


async def test_claims_after_fleet_aclose_raise(postgres_dsn: str) -> None:
    from aio88.fleet import Fleet

    async with Fleet(postgres_dsn, lease=QUIET) as fleet:
        leases = fleet.leases
        leases.track("t1", "video")
        assert await leases.claim("t1", "video")
    with pytest.raises(FleetError, match="the fleet was closed"):
        await leases.claim("t1", "video")


async def test_an_end_recorded_without_the_task_is_still_reported(dsn: str) -> None:
    """A finished row without ``task_json`` (finished by hand, say) is reported with empty
    bytes: the poller cannot decode them and polls the task itself."""
    async with members(dsn, "a", "b", lease=QUIET) as (a, b):
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(
                "INSERT INTO aio88_tasks (task_id, kind, finished_at)"
                " VALUES ('t1', 'generation', now())"
            )
            a.leases.track("t1", "video")  # found by the claim
            await a.until(lambda: bool(a.finished))
            assert a.finished == [("t1", "generation", b"")]
            b.leases.track("t2", "video")
            assert await b.leases.claim("t2", "video")
            a.leases.track("t2", "video")
            assert not await a.leases.claim("t2", "video")
            await admin.execute(  # found by the read a notification causes
                "UPDATE aio88_tasks SET finished_at = now(), lease_until = NULL"
                " WHERE task_id = 't2'"
            )
            await admin.execute("SELECT pg_notify('aio88_finished', 't2')")
            await a.until(lambda: len(a.finished) == 2)
            assert a.finished[1] == ("t2", "video", b"")
        finally:
            await admin.close()
