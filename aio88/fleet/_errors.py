"""The fleet's exception (in a module of its own: every part of the fleet raises it)."""

from __future__ import annotations

import asyncio

import asyncpg

from .._errors import Aio88Error

__all__ = ["DB_ERRORS", "FleetError"]

#: What a failed round trip to the database raises (a lost or refused connection, a
#: timeout, an error from the server or the driver).
DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class FleetError(Aio88Error):
    """The fleet's database cannot be reached or used (its message names the host and
    port, never a password), or the fleet is used before :meth:`Fleet.start`."""
