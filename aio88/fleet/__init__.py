"""Several processes, one API key: a shared rate budget and task leases in PostgreSQL.

```py
from aio88 import Client
from aio88.fleet import Fleet

async with Fleet("postgresql://user@db/app", lease=30.0) as fleet:  # or AIO88_FLEET_URL
    async with Client(fleet=fleet, rate_limit=20) as client:  # 20/s for the whole fleet
        ...
```

Needs the ``aio88[postgres]`` extra (asyncpg); ``import aio88`` never imports this
package.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio

try:
    import asyncpg
except ImportError as missing:
    raise ImportError(
        "aio88.fleet needs asyncpg: pip install 'aio88[postgres]'", name=missing.name
    ) from missing

from .._config import (
    DEFAULT_LEASE,
    ENV_FLEET_URL,
    FLEET_CLOSE_TIMEOUT,
    FLEET_CONNECT_TIMEOUT,
    FLEET_POOL_SIZE,
    FLEET_PROCESS_EXPIRY,
    FLEET_PRUNE_BEATS,
    FLEET_RETENTION,
)
from ._errors import DB_ERRORS, FleetError
from ._leases import FleetLeases
from ._listen import Listener
from ._outage import OutageLog
from ._rate import FleetRateBudget, parse_notice
from ._schema import (
    CHANNEL_FINISHED,
    CHANNEL_HINT,
    CHANNEL_RATE,
    SCHEMA_VERSION,
    SchemaTooNew,
    migrate,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    from asyncpg.pool import PoolConnectionProxy

__all__ = ["Fleet", "FleetError", "FleetProcess", "FleetRateBudget"]

log = logging.getLogger("aio88.fleet")

#: Where a statement can run: a connection, one lent by the pool, or the pool.
Executor: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any] | asyncpg.Pool[Any]"


@dataclass(frozen=True)
class FleetProcess:
    """One live process of the fleet, as :meth:`Fleet.snapshot` sees it."""

    id: str
    """The process's id (``host:pid:random``)."""
    host: str
    """The machine it runs on (its host name)."""
    pid: int
    """Its process id there."""
    started_at: datetime
    """When it joined the fleet (the database's clock)."""
    heartbeat_at: datetime
    """Its last heartbeat (every ``lease / 3`` seconds while it runs)."""
    lease_seconds: float
    """How long its leases last without renewal."""
    leases: int
    """How many unfinished tasks it holds the lease of now: how many it polls."""


def _where(dsn: str) -> str:
    """``host:port`` of ``dsn`` (a URL or ``key=value`` words), for messages: never the
    user or the password."""
    host: str | None = None
    port: str | None = None
    if "://" in dsn:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        try:
            port = str(parts.port) if parts.port else None
        except ValueError:
            port = "?"
        host = parts.hostname or _first(query, "host")
        port = port or _first(query, "port")
    else:
        words = dict(word.split("=", 1) for word in dsn.split() if "=" in word)
        host, port = words.get("host"), words.get("port")
    host = unquote(host) if host else os.environ.get("PGHOST", "localhost")
    return f"{host}:{port or os.environ.get('PGPORT', '5432')}"


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _password(dsn: str) -> str | None:
    """The password in ``dsn``, to keep it out of messages."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        found = parts.password or _first(parse_qs(parts.query), "password")
        return unquote(found) if found else None
    words = dict(word.split("=", 1) for word in dsn.split() if "=" in word)
    return words.get("password")


class Fleet:
    """A process's seat in a fleet sharing one PostgreSQL: a connection pool, a LISTEN
    connection, a heartbeat, the task leases and the shared rate budgets. Implements
    :class:`aio88._coordination.Coordinator`, what ``Client(fleet=...)`` takes.

    Use ``async with Fleet(...) as fleet`` (or :meth:`start` and :meth:`aclose`).

    Args:
        dsn: The database's URL (``postgresql://user:password@host:port/db``); by default
            the ``AIO88_FLEET_URL`` environment variable.
        lease: Seconds a task's lease lasts without renewal: how soon another process
            takes over the tasks of one that died. Renewed every ``lease / 3``.
        pool_size: Connections of the pool (one more LISTENs).
        retention: Seconds a finished task's row is kept for waiters that come later.

    Raises:
        FleetError: No ``dsn`` and no ``AIO88_FLEET_URL``.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        lease: float = DEFAULT_LEASE,
        pool_size: int = FLEET_POOL_SIZE,
        retention: float = FLEET_RETENTION,
    ) -> None:
        dsn = dsn or os.environ.get(ENV_FLEET_URL)
        if not dsn:
            raise FleetError(
                f"the fleet needs a PostgreSQL database: pass Fleet(dsn) or set {ENV_FLEET_URL}"
            )
        if not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size!r}")
        if not retention >= 0:
            raise ValueError(f"retention must be 0 or more seconds, got {retention!r}")
        self._dsn = dsn
        self._lease = float(lease)
        self._pool_size = pool_size
        self.retention = float(retention)
        self.where = _where(dsn)
        """``host:port`` of the database (no credentials), as messages name it."""
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        """This process's row in ``aio88_processes`` and the owner of its leases."""
        self._pool: asyncpg.Pool[Any] | None = None
        self._listener: Listener | None = None
        self._leases: FleetLeases | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._budgets: dict[tuple[str, float | None, Callable[[], float]], FleetRateBudget] = {}
        self._state = "new"
        self._ran = False  # it was started (then "closed" means closed after use)
        #: Heartbeats done (for tests and the curious).
        self.beats = 0
        # one story in the log per outage, shared by the heartbeat and the leases
        self._outage = OutageLog(log)

    def _not_started(self) -> FleetError:
        """The error for a use of the fleet while it is not running."""
        if self._state == "closed" and self._ran:
            return FleetError(
                "the fleet was closed: use it inside its async with block (close the fleet "
                "after the clients and pollers that use it)"
            )
        return FleetError("start the fleet first: async with Fleet(...) as fleet")

    # -- Coordinator ----------------------------------------------------------------------

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts without renewal (``lease``)."""
        return self._lease

    @property
    def leases(self) -> FleetLeases:
        """Which process polls which task (the fleet must be started)."""
        if self._leases is None:
            raise self._not_started()
        return self._leases

    def rate_budget(
        self, name: str, rate: float | None, clock: Callable[[], float]
    ) -> FleetRateBudget:
        """The budget every process's requests under ``name`` share: ``rate`` per second
        fleet-wide plus one burst of ``rate`` (``None``: only the shared 429 pause). The
        same arguments give the same budget. No I/O: the row is made on first use."""
        if self._pool is None or self._state != "started":
            raise self._not_started()
        key = (name, rate, clock)
        budget = self._budgets.get(key)
        if budget is None:
            budget = FleetRateBudget(self._pool, name, rate, clock, self._spawn)
            self._budgets[key] = budget
        return budget

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _unreachable(self, exc: BaseException) -> FleetError:
        reason = f"{type(exc).__name__}: {exc}"
        password = _password(self._dsn)
        if password:
            reason = reason.replace(password, "***")
        return FleetError(f"cannot use the fleet's database at {self.where}: {reason}")

    async def _connect(self) -> asyncpg.Connection[Any]:
        return await asyncpg.connect(self._dsn, timeout=FLEET_CONNECT_TIMEOUT)

    async def start(self) -> None:
        """Connect, create or migrate the schema, register this process, and start the
        heartbeat, the LISTEN connection and the leases.

        Raises:
            FleetError: The database cannot be reached or used (the message names its
                host and port, never the password), or its schema is newer than this
                aio88 knows.
        """
        if self._state != "new":
            raise FleetError(f"a Fleet starts once (this one is {self._state})")
        self._state = "starting"
        try:
            await self._start()
        except BaseException as exc:
            await self._abort()
            self._state = "closed"
            if isinstance(exc, SchemaTooNew):
                raise FleetError(
                    f"the fleet's database at {self.where} has schema version {exc.version}, "
                    f"newer than this aio88 knows ({SCHEMA_VERSION}): upgrade aio88"
                ) from None
            if isinstance(exc, (*DB_ERRORS, ValueError)):
                raise self._unreachable(exc) from None
            raise
        self._state = "started"
        self._ran = True

    async def _start(self) -> None:
        # min_size=0: with a floor, asyncpg reconnects lost connections in the background
        # and logs a traceback for each failed try while the database is down; without
        # one, a connection is opened when a statement needs it (the heartbeat's, every
        # lease / 3, keeps them from idling out).
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._pool_size,
            timeout=FLEET_CONNECT_TIMEOUT,
        )
        async with self._pool.acquire() as connection:
            await migrate(connection)
            await self._register(connection)
        self._leases = leases = FleetLeases(
            self._pool, process_id=self.process_id, lease=self._lease, outage=self._outage
        )
        await leases.start()
        listener = self._listener = Listener(self._connect)
        for channel in (CHANNEL_FINISHED, CHANNEL_HINT):
            listener.add(channel, _router(leases, channel))
        listener.add(CHANNEL_RATE, self._on_rate)
        listener.on_reconnect(leases.on_reconnect)
        listener.on_reconnect(self._refresh_budgets)
        await listener.start()
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="aio88-fleet-heartbeat")

    async def _register(self, connection: Executor) -> None:
        await connection.execute(
            "INSERT INTO aio88_processes (id, host, pid, lease_seconds) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            self.process_id,
            socket.gethostname(),
            os.getpid(),
            self._lease,
        )

    async def aclose(self) -> None:
        """Leave the fleet: release this process's leases (others take its tasks over at
        once), delete its row, close the connections. Runs to the end also when the
        caller is cancelled (Ctrl-C), within ``FLEET_CLOSE_TIMEOUT`` seconds; after that
        the connections are cut (the leases then expire on their own)."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        self._state = "closed"
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + FLEET_CLOSE_TIMEOUT
            await self._leave()
        if scope.cancelled_caught:
            log.warning("aio88 fleet: leaving took over %ss; connections cut", FLEET_CLOSE_TIMEOUT)
        await self._abort()

    async def _leave(self) -> None:
        """The clean part of closing: what others should hear of."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait([self._heartbeat])  # its end, without raising its cancel
            self._heartbeat = None
        if self._background:  # a 429's pause still on its way to the others
            await asyncio.wait(set(self._background))
        if self._leases is not None:
            await self._leases.release_all()
        if self._pool is not None:
            try:
                await self._pool.execute(
                    "DELETE FROM aio88_processes WHERE id = $1", self.process_id
                )
            except DB_ERRORS as exc:
                log.warning("aio88 fleet: could not delete this process's row: %s", exc)

    async def _abort(self) -> None:
        """Stop everything still running and close (or cut) the connections."""
        with anyio.CancelScope(shield=True):
            tasks = [t for t in (self._heartbeat, *self._background) if t is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            self._heartbeat = None
            leases, self._leases = self._leases, None
            if leases is not None:
                with anyio.move_on_after(1.0):
                    await leases.aclose()
            listener, self._listener = self._listener, None
            if listener is not None:
                await listener.aclose()
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    with anyio.fail_after(1.0):
                        await pool.close()
                except (*DB_ERRORS, TimeoutError):
                    pool.terminate()

    # -- background -------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        """Run ``coroutine`` in a task the fleet owns (waited for when it closes)."""
        if self._state != "started":
            coroutine.close()
            return
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            self.beats += 1
            try:
                await self.beat(prune=self.beats % FLEET_PRUNE_BEATS == 1)
            except DB_ERRORS as exc:
                # logged once per outage and then now and then, not once per beat
                self._outage.failed(exc)
            except Exception:  # a heartbeat that stops silently looks like a dead process
                log.exception("aio88 fleet: heartbeat failed; retrying")

    async def beat(self, *, prune: bool = False) -> None:
        """One heartbeat (the fleet runs one every ``lease / 3`` seconds): renew this
        process's row and its leases, and if ``prune``, delete old rows (see
        :meth:`prune`)."""
        pool = self._started_pool()
        status = await pool.execute(
            "UPDATE aio88_processes SET heartbeat_at = now() WHERE id = $1", self.process_id
        )
        self._outage.ok()
        if status == "UPDATE 0":  # another process pruned us as dead: we are back
            await self._register(pool)
        if self._leases is not None:
            await self._leases.renew()
        if prune:
            await self.prune()

    async def prune(self) -> tuple[int, int]:
        """Delete finished tasks' rows older than ``retention`` and the rows of processes
        silent for ``FLEET_PROCESS_EXPIRY`` of their leases; returns how many of each.
        The heartbeat does it now and then."""
        pool = self._started_pool()
        tasks = await pool.execute(
            "DELETE FROM aio88_tasks WHERE finished_at < now() - $1::interval",
            timedelta(seconds=self.retention),
        )
        processes = await pool.execute(
            "DELETE FROM aio88_processes WHERE id <> $1 AND heartbeat_at < now() - "
            "make_interval(secs => lease_seconds * $2)",
            self.process_id,
            float(FLEET_PROCESS_EXPIRY),
        )
        return int(tasks.split()[-1]), int(processes.split()[-1])

    def _started_pool(self) -> asyncpg.Pool[Any]:
        if self._pool is None or self._state == "closed":
            raise self._not_started()
        return self._pool

    def _on_rate(self, payload: str) -> None:
        notice = parse_notice(payload)
        if notice is None:
            return
        for (name, _, _), budget in self._budgets.items():
            if name == notice.name:
                budget.notice(notice)

    async def _refresh_budgets(self) -> None:
        for budget in list(self._budgets.values()):
            await budget.refresh()

    # -- seeing the fleet ---------------------------------------------------------------------

    async def snapshot(self) -> list[FleetProcess]:
        """The fleet's live processes and how many task leases each holds, oldest first."""
        rows = await self._started_pool().fetch(
            "SELECT p.id, p.host, p.pid, p.started_at, p.heartbeat_at, p.lease_seconds, "
            "  (SELECT count(*) FROM aio88_tasks t WHERE t.owner = p.id "
            "     AND t.finished_at IS NULL AND t.lease_until > now()) AS leases "
            "FROM aio88_processes p ORDER BY p.started_at, p.id"
        )
        return [
            FleetProcess(
                id=row["id"],
                host=row["host"],
                pid=row["pid"],
                started_at=row["started_at"],
                heartbeat_at=row["heartbeat_at"],
                lease_seconds=row["lease_seconds"],
                leases=row["leases"],
            )
            for row in rows
        ]

    @property
    def listener(self) -> Listener:
        """The LISTEN connection (its ``backend_pid`` and ``reconnects``, for tests)."""
        if self._listener is None:
            raise self._not_started()
        return self._listener


def _router(leases: FleetLeases, channel: str) -> Callable[[str], None]:
    """The LISTEN handler that hands ``channel``'s notifications to the leases."""

    def route(payload: str) -> None:
        leases.on_notify(channel, payload)

    return route
