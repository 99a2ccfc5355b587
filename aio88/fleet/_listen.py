"""The fleet's LISTEN connection: one dedicated session per process that hears every
channel the fleet's parts registered, and comes back after it is lost.

PostgreSQL does not replay a notification sent while nobody listened, so after each
reconnect the registered ``on_reconnect`` hooks run (the leases re-read the rows of the
tasks they wait on, the rate budgets their pause). The connection is checked with a query
every ``FLEET_LISTEN_CHECK`` seconds while it is quiet, so that one the network dropped
without a word is noticed too. ``LISTEN`` needs a session of its own: not a pooled
connection, and not through pgbouncer in transaction mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .._config import FLEET_LISTEN_CHECK
from .._retry import backoff_delay, half_jitter
from ._errors import DB_ERRORS, RECONNECT_BACKOFF

__all__ = ["Listener"]

log = logging.getLogger("aio88.fleet")


#: ``handler(payload)``: called for each notification on its channel, in the event loop;
#: it must not block (and should not raise: what it raises is logged).
NotifyHandler = Callable[[str], object]
#: Awaited after each reconnect, once every channel is listened to again.
ReconnectHook = Callable[[], Awaitable[object]]
#: How the listener opens its connection (the fleet's, with its DSN and timeouts).
Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]


class Listener:
    """LISTENs on every channel given to :meth:`add` over one connection, reconnecting
    with backoff when it is lost.

    Args:
        connect: Opens a new connection.
        check_every: Seconds between checks of a quiet connection.
    """

    def __init__(self, connect: Connect, *, check_every: float = FLEET_LISTEN_CHECK) -> None:
        self._connect = connect
        self._check_every = check_every
        self._handlers: dict[str, NotifyHandler] = {}
        self._hooks: list[ReconnectHook] = []
        self._connection: asyncpg.Connection[Any] | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: How many times the connection was made again after a loss.
        self.reconnects = 0

    @property
    def backend_pid(self) -> int | None:
        """The server process of the connection in use (``None`` while there is none)."""
        connection = self._connection
        return None if connection is None or connection.is_closed() else connection.get_server_pid()

    def add(self, channel: str, handler: NotifyHandler) -> None:
        """Call ``handler(payload)`` for each notification on ``channel`` (one handler per
        channel). Takes effect at the next (re)connect: register before :meth:`start`."""
        self._handlers[channel] = handler

    def on_reconnect(self, hook: ReconnectHook) -> None:
        """Await ``hook()`` after each reconnect (not after the first connect)."""
        self._hooks.append(hook)

    async def start(self) -> None:
        """Connect and listen (errors propagate: the fleet reports them), then keep the
        connection alive in the background."""
        await self._open()
        self._task = asyncio.create_task(self._watch(), name="aio88-fleet-listen")

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # its end, without raising its cancel
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            try:
                await asyncio.wait_for(connection.close(), timeout=1.0)
            except DB_ERRORS:
                connection.terminate()

    async def _open(self) -> None:
        connection = await self._connect()
        try:
            for channel, handler in self._handlers.items():
                await connection.add_listener(channel, self._callback(handler))
        except BaseException:
            connection.terminate()
            raise
        # bound to this connection: a late call for an older one must not end this one
        lost = self._lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        self._connection = connection

    def _callback(self, handler: NotifyHandler) -> Callable[[Any, int, str, object], None]:
        def deliver(_connection: object, _pid: int, channel: str, payload: object) -> None:
            try:
                handler(str(payload))
            except Exception:  # one bad handler must not stop the others' notifications
                log.exception("aio88 fleet: the handler of %s failed", channel)

        return deliver

    async def _healthy(self) -> bool:
        """Wait until the connection is lost or a check is due; whether it is still good."""
        connection = self._connection
        if connection is None or connection.is_closed():
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._lost.wait(), timeout=self._check_every)
            return False
        try:
            await connection.fetchval("SELECT 1", timeout=self._check_every)
        except DB_ERRORS:
            return False
        return True

    async def _watch(self) -> None:
        while True:
            if await self._healthy():
                continue
            lost, self._connection = self._connection, None
            if lost is not None:
                lost.terminate()
            log.warning("aio88 fleet: the LISTEN connection was lost; reconnecting")
            tries = 0
            while True:
                try:
                    await self._open()
                    break
                except DB_ERRORS:
                    await asyncio.sleep(backoff_delay(tries, RECONNECT_BACKOFF, half_jitter))
                    tries += 1
            self.reconnects += 1
            for hook in self._hooks:
                await _run_hook(hook)


async def _run_hook(hook: ReconnectHook) -> None:
    try:
        await hook()
    except Exception:  # a failed re-read must not stop the listening
        log.exception("aio88 fleet: a reconnect hook failed")
