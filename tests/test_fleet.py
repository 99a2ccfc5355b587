"""The fleet's seat in PostgreSQL (aio88.fleet.Fleet): schema, process rows, heartbeat,
pruning, the LISTEN connection, errors. Against a real server (tests/postgres.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import asyncpg
import pytest
from postgres import database_outage

from aio88 import Aio88Error
from aio88._coordination import Coordinator
from aio88.fleet import Fleet, FleetError
from aio88.fleet._listen import Listener
from aio88.fleet._schema import SCHEMA_VERSION, migrate

ROOT = Path(__file__).parent.parent


async def _rows(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def _until(
    check: Callable[[], bool | Awaitable[bool]], what: str, seconds: float = 8.0
) -> None:
    """Wait until ``check()`` (sync or async) is true; fail naming ``what`` otherwise."""
    with anyio.move_on_after(seconds):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)
    pytest.fail(f"never: {what}")


async def test_a_fleet_creates_its_schema_and_registers_itself(postgres_dsn: str) -> None:
    async with Fleet(postgres_dsn, lease=3.0) as fleet:
        assert isinstance(fleet, Coordinator)
        assert fleet.lease_seconds == 3.0
        assert fleet.leases.lease == 3.0
        meta = await _rows(postgres_dsn, "SELECT value FROM aio88_meta")
        assert [r["value"] for r in meta] == [str(SCHEMA_VERSION)]
        rows = await _rows(postgres_dsn, "SELECT * FROM aio88_processes")
        assert [(r["id"], r["pid"], r["lease_seconds"]) for r in rows] == [
            (fleet.process_id, os.getpid(), 3.0)
        ]
        snapshot = await fleet.snapshot()
        assert [(p.id, p.leases) for p in snapshot] == [(fleet.process_id, 0)]
    assert await _rows(postgres_dsn, "SELECT * FROM aio88_processes") == []


async def test_migrating_twice_changes_nothing(postgres_dsn: str) -> None:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        assert await migrate(connection) == 0
        assert await migrate(connection) == SCHEMA_VERSION
    finally:
        await connection.close()


async def test_a_newer_schema_is_refused(postgres_dsn: str) -> None:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await migrate(connection)
        await connection.execute("UPDATE aio88_meta SET value = '99'")
    finally:
        await connection.close()
    with pytest.raises(FleetError, match="schema version 99, newer"):
        await Fleet(postgres_dsn).start()


async def test_three_fleets_starting_together_on_an_empty_database(postgres_dsn: str) -> None:
    fleets = [Fleet(postgres_dsn, lease=3.0) for _ in range(3)]
    async with anyio.create_task_group() as group:
        for fleet in fleets:
            group.start_soon(fleet.start)
    try:
        rows = await _rows(postgres_dsn, "SELECT id FROM aio88_processes ORDER BY id")
        assert sorted(r["id"] for r in rows) == sorted(f.process_id for f in fleets)
        assert len({f.process_id for f in fleets}) == 3
    finally:
        for fleet in fleets:
            await fleet.aclose()
    assert await _rows(postgres_dsn, "SELECT * FROM aio88_processes") == []


START_AND_LEAVE = """
import asyncio, sys, time
from aio88.fleet import Fleet

async def main():
    start_at = float(sys.argv[2])
    time.sleep(max(0.0, start_at - time.time()))  # all start at the same moment
    async with Fleet(sys.argv[1], lease=3.0) as fleet:
        print(fleet.process_id, flush=True)
        await asyncio.sleep(float(sys.argv[3]))

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_processes_starting_at_the_same_moment_all_come_up(postgres_dsn: str) -> None:
    """Real processes (not tasks of one loop) migrate the same empty database at once."""
    import time

    start_at = time.time() + 3.0  # after every interpreter has imported aio88.fleet
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            START_AND_LEAVE,
            postgres_dsn,
            str(start_at),
            "1.0",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    results = [await p.communicate() for p in processes]
    for process, (_, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err.decode()
    ids = {out.decode().strip() for out, _ in results}
    assert len(ids) == 3
    meta = await _rows(postgres_dsn, "SELECT value FROM aio88_meta")
    assert [r["value"] for r in meta] == [str(SCHEMA_VERSION)]
    assert await _rows(postgres_dsn, "SELECT * FROM aio88_processes") == []


async def test_an_unreachable_database_names_host_and_port(closed_port: int) -> None:
    fleet = Fleet(f"postgresql://app:s3cret-pw@127.0.0.1:{closed_port}/app")
    with pytest.raises(FleetError) as caught:
        await fleet.start()
    message = str(caught.value)
    assert f"127.0.0.1:{closed_port}" in message
    assert "s3cret-pw" not in message
    assert isinstance(caught.value, Aio88Error)
    assert "s3cret-pw" not in repr(caught.value.__cause__)


async def test_a_wrong_password_is_not_repeated(postgres_server: object, postgres_dsn: str) -> None:
    """The server asks for no password here (trust); a DSN naming a database that does
    not exist fails after connecting, and the message still hides the password."""
    dsn = postgres_dsn.replace("postgres@", "postgres:hunter2-secret@") + "_missing"
    with pytest.raises(FleetError) as caught:
        await Fleet(dsn).start()
    assert "hunter2-secret" not in str(caught.value)
    assert "127.0.0.1:" in str(caught.value)


def test_without_a_dsn_the_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FleetError, match="AIO88_FLEET_URL"):
        Fleet()
    monkeypatch.setenv("AIO88_FLEET_URL", "postgresql://u:pw@db.example:6543/app")
    assert Fleet().where == "db.example:6543"


@pytest.mark.parametrize(
    ("dsn", "where"),
    [
        ("postgresql://u@h/db", "h:5432"),
        ("postgresql:///db?host=/run/postgresql&port=5433", "/run/postgresql:5433"),
        ("host=db port=7 user=u password=x", "db:7"),
        ("postgresql://u@h:notaport/db", "h:?"),
    ],
)
def test_where_a_dsn_points(dsn: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    assert Fleet(dsn).where == where


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="lease"):
        Fleet("postgresql://h/db", lease=0)
    with pytest.raises(ValueError, match="pool_size"):
        Fleet("postgresql://h/db", pool_size=0)
    with pytest.raises(ValueError, match="retention"):
        Fleet("postgresql://h/db", retention=-1)


async def test_a_fleet_not_started_says_so(postgres_dsn: str) -> None:
    fleet = Fleet(postgres_dsn)
    for use in (lambda: fleet.leases, lambda: fleet.listener):
        with pytest.raises(FleetError, match="start the fleet first"):
            use()
    with pytest.raises(FleetError, match="start the fleet first"):
        fleet.rate_budget("k", 10.0, lambda: 0.0)
    with pytest.raises(FleetError, match="start the fleet first"):
        await fleet.snapshot()
    await fleet.aclose()  # closing one never started is fine
    with pytest.raises(FleetError, match="starts once"):
        await fleet.start()


async def test_a_fleet_used_after_it_closed_says_so(postgres_dsn: str) -> None:
    async with Fleet(postgres_dsn, lease=3.0) as fleet:
        assert fleet.leases is not None
    for use in (lambda: fleet.leases, lambda: fleet.listener):
        with pytest.raises(FleetError, match="the fleet was closed"):
            use()
    with pytest.raises(FleetError, match="the fleet was closed"):
        fleet.rate_budget("k", 10.0, lambda: 0.0)
    with pytest.raises(FleetError, match="the fleet was closed"):
        await fleet.snapshot()
    with pytest.raises(FleetError, match="the fleet was closed"):
        await fleet.beat()


# An outage lasts as long as the LISTEN connection's reconnect backoff (up to 5 s) makes
# it: seconds, more on a loaded machine.
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_database_outage_is_a_few_log_lines(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses connections for several heartbeats: the fleet logs the first
    failure and the recovery, not a line per failed statement, and asyncpg's pool logs
    no traceback (the pool keeps no connection floor to restore)."""
    async with Fleet(postgres_dsn, lease=0.15) as fleet:
        with caplog.at_level(logging.DEBUG):
            async with database_outage(postgres_dsn):
                beats = fleet.beats
                for n in range(30):  # many statements fail meanwhile
                    fleet.leases.track(f"t{n}", "video")
                    assert not await fleet.leases.claim(f"t{n}", "video")
                await _until(lambda: fleet.beats >= beats + 8, "eight heartbeats")
            await _until(
                lambda: any("is back" in r.getMessage() for r in caplog.records),
                "the recovery's line",
            )
            await _until(lambda: fleet.listener.reconnects >= 1, "the LISTEN connection")
    fleet_lines = [r for r in caplog.records if r.name == "aio88.fleet"]
    messages = [r.getMessage() for r in fleet_lines]
    assert all(m.startswith("aio88 fleet: ") for m in messages), messages
    assert sum("the database failed" in m for m in messages) == 1, messages
    assert sum("is back after" in m for m in messages) == 1, messages
    # the outage is far shorter than the "still failing" interval; the LISTEN
    # connection's loss is one more line
    assert len(fleet_lines) <= 4, messages
    assert not [r for r in caplog.records if r.name.startswith("asyncpg")]


async def test_the_heartbeat_renews_the_row_and_brings_it_back(postgres_dsn: str) -> None:
    async with Fleet(postgres_dsn, lease=0.3) as fleet:
        first = (await _rows(postgres_dsn, "SELECT heartbeat_at FROM aio88_processes"))[0][0]
        await _until(lambda: fleet.beats >= 2, "two heartbeats")
        rows = await _rows(postgres_dsn, "SELECT heartbeat_at FROM aio88_processes")
        assert rows[0][0] > first
        # another process took this one for dead and deleted its row: the next beat
        # puts it back
        await _rows(postgres_dsn, "DELETE FROM aio88_processes")
        await fleet.beat()
        rows = await _rows(postgres_dsn, "SELECT id FROM aio88_processes")
        assert [r["id"] for r in rows] == [fleet.process_id]


async def test_pruning_old_tasks_and_silent_processes(postgres_dsn: str) -> None:
    async with Fleet(postgres_dsn, lease=0.3, retention=0.5) as fleet:
        connection = await asyncpg.connect(postgres_dsn)
        try:
            await connection.execute(
                "INSERT INTO aio88_tasks (task_id, kind, finished_at) VALUES "
                "('old', 'video', now() - interval '1 hour'), "
                "('new', 'video', now() + interval '1 hour'), "
                "('open', 'video', NULL)"
            )
            await connection.execute(
                "INSERT INTO aio88_processes (id, host, pid, lease_seconds, heartbeat_at) VALUES "
                "('gone', 'h', 1, 0.3, now() - interval '1 hour'), "
                "('alive', 'h', 2, 3600, now() - interval '1 hour')"
            )
            # the heartbeat prunes now and then (its first beat among them)

            async def pruned() -> bool:
                return bool(await connection.fetchval("SELECT count(*) FROM aio88_tasks") == 2)

            await _until(pruned, "the heartbeat pruned the old finished task")
            ids = await connection.fetch("SELECT id FROM aio88_processes ORDER BY id")
            assert [r["id"] for r in ids] == sorted(["alive", fleet.process_id])
            tasks = await connection.fetch("SELECT task_id FROM aio88_tasks ORDER BY task_id")
            assert [r["task_id"] for r in tasks] == ["new", "open"]
            assert await fleet.prune() == (0, 0)
        finally:
            await connection.close()


async def test_the_listen_connection_comes_back(postgres_dsn: str) -> None:
    """pg_terminate_backend cuts the LISTEN session: the listener reconnects, listens
    again, and runs its reconnect hooks (notifications are not replayed)."""
    async with Fleet(postgres_dsn, lease=3.0) as fleet:
        listener = fleet.listener
        heard: list[str] = []
        reconnected: list[int] = []

        async def hook() -> None:
            reconnected.append(listener.reconnects)

        async def failing_hook() -> None:
            raise RuntimeError("a hook that fails does not stop the others")

        # a second listener on the fleet's database, to see handlers and hooks directly
        second = Listener(lambda: asyncpg.connect(postgres_dsn), check_every=0.2)
        second.add("test_channel", heard.append)
        second.add("test_bad", lambda payload: 1 / 0)
        second.on_reconnect(failing_hook)
        second.on_reconnect(hook)
        await second.start()
        try:
            pid = listener.backend_pid
            second_pid = second.backend_pid
            assert pid is not None and second_pid is not None
            await _rows(postgres_dsn, "SELECT pg_terminate_backend($1)", pid)
            await _rows(postgres_dsn, "SELECT pg_terminate_backend($1)", second_pid)
            await _until(lambda: listener.reconnects == 1, "the fleet's listener reconnected")
            await _until(lambda: reconnected == [1], "the hook ran after the reconnect")
            assert listener.backend_pid not in (None, pid)
            await _rows(postgres_dsn, "SELECT pg_notify('test_bad', 'x')")
            await _rows(postgres_dsn, "SELECT pg_notify('test_channel', 'after')")
            await _until(lambda: heard == ["after"], "a notification after the reconnect")
        finally:
            await second.aclose()
        assert second.backend_pid is None


async def test_the_listener_retries_until_the_database_answers(
    postgres_dsn: str, closed_port: int
) -> None:
    attempts: list[int] = []

    async def connect() -> asyncpg.Connection:
        attempts.append(1)
        if len(attempts) in (2, 3):  # the database is away for a moment
            return await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{closed_port}/x")
        return await asyncpg.connect(postgres_dsn)

    listener = Listener(connect, check_every=0.2)
    await listener.start()
    try:
        pid = listener.backend_pid
        await _rows(postgres_dsn, "SELECT pg_terminate_backend($1)", pid)
        await _until(lambda: listener.reconnects == 1, "reconnected after two refusals")
        assert len(attempts) == 4
    finally:
        await listener.aclose()


async def test_cancelled_while_inside_the_fleet_still_leaves_cleanly(postgres_dsn: str) -> None:
    """Ctrl-C cancels the main task: the fleet's exit still deletes its row."""

    async def run(started: anyio.Event) -> None:
        async with Fleet(postgres_dsn, lease=3.0):
            started.set()
            await anyio.sleep_forever()

    started = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(run, started)
        await started.wait()
        assert len(await _rows(postgres_dsn, "SELECT id FROM aio88_processes")) == 1
        group.cancel_scope.cancel()
    assert await _rows(postgres_dsn, "SELECT id FROM aio88_processes") == []


async def test_import_aio88_imports_no_driver() -> None:
    code = "import sys, aio88; assert 'asyncpg' not in sys.modules; "
    code += "assert 'aio88.fleet' not in sys.modules"
    done = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert done.returncode == 0, done.stderr.decode()


async def test_a_key_value_dsn_keeps_its_password_out_too(closed_port: int) -> None:
    dsn = f"host=127.0.0.1 port={closed_port} user=app password=kv-s3cret dbname=app"
    with pytest.raises(FleetError) as caught:
        await Fleet(dsn).start()
    assert f"127.0.0.1:{closed_port}" in str(caught.value)
    assert "kv-s3cret" not in str(caught.value)


async def test_a_start_cancelled_midway_leaves_nothing_open() -> None:
    """A database that accepts the connection and never answers: the caller gives up;
    the half-made fleet closes what it opened and is done."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fleet = Fleet(f"postgresql://postgres@127.0.0.1:{port}/x")
    try:
        with anyio.move_on_after(0.5) as scope:
            await fleet.start()
        assert scope.cancelled_caught
        assert accepted  # it did connect
        with pytest.raises(FleetError, match="starts once"):
            await fleet.start()
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_leaving_is_bounded_when_the_database_stalls(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another session holds this process's row locked: the DELETE would wait forever;
    the exit gives up after its timeout and cuts the connections."""
    import aio88.fleet

    monkeypatch.setattr(aio88.fleet, "FLEET_CLOSE_TIMEOUT", 0.5)
    fleet = Fleet(postgres_dsn, lease=3.0)
    await fleet.start()
    blocker = await asyncpg.connect(postgres_dsn)
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT * FROM aio88_processes WHERE id = $1 FOR UPDATE", fleet.process_id
            )
            await fleet.aclose()
        assert "connections cut" in caplog.text
        rows = await blocker.fetch("SELECT id FROM aio88_processes")
        assert [r["id"] for r in rows] == [fleet.process_id]  # it expires on its own
    finally:
        await blocker.close()


async def test_odd_notifications_are_ignored(postgres_dsn: str) -> None:
    async with Fleet(postgres_dsn, lease=3.0) as fleet:
        now = [0.0]
        budget = fleet.rate_budget("mine", None, lambda: now[0])
        for channel, payload in [
            ("aio88_rate", "not json"),
            ("aio88_rate", '{"name": "other", "paused": 5, "signalled": 0}'),
            ("aio88_hint", "no-such-task"),
            ("aio88_finished", "no-such-task"),
            ("aio88_rate", '{"name": "mine", "paused": 0, "signalled": 100}'),
            ("aio88_rate", '{"name": "mine", "paused": 7, "signalled": 0}'),
        ]:
            await _rows(postgres_dsn, "SELECT pg_notify($1, $2)", channel, payload)
        # notifications arrive in order: once the last one is in, so are the others,
        # and only it paused "mine"
        await _until(lambda: budget.paused_until > 0, "the last notification")
        assert budget.paused_until == 7.0


async def test_a_quiet_listen_connection_is_checked(postgres_dsn: str) -> None:
    listener = Listener(lambda: asyncpg.connect(postgres_dsn), check_every=0.05)
    await listener.start()
    try:
        await asyncio.sleep(0.3)  # several checks, all answered
        assert listener.reconnects == 0
    finally:
        await listener.aclose()
    await listener.aclose()  # twice is fine


async def test_without_asyncpg_the_import_says_what_to_install() -> None:
    code = "import sys; sys.modules['asyncpg'] = None; import aio88.fleet"
    done = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert done.returncode == 1
    assert "pip install 'aio88[postgres]'" in done.stderr.decode()
