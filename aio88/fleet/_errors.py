"""The fleet's exception (in a module of its own: every part of the fleet raises it)."""

from __future__ import annotations

import asyncio

import asyncpg

from .._errors import Aio88Error

__all__ = ["DB_ERRORS", "UNREACHABLE", "FleetError"]

#: What a failed round trip to the database raises (a lost or refused connection, a
#: timeout, an error from the server or the driver; asyncpg's InternalClientError is no
#: InterfaceError, and comes from a pooled connection whose session the server cut).
DB_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)

#: The failures that say the database is out of reach for now, not that a statement is
#: wrong: a connection refused, lost or timed out; the server starting, shutting down,
#: cancelling statements or out of connections; the database not taking connections; and
#: asyncpg's "another operation is in progress" on a pooled connection whose session the
#: server cut while it sat idle (asyncpg >= 0.29 after ``pg_terminate_backend``).
UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
)


class FleetError(Aio88Error):
    """The fleet's database cannot be reached or used (its message names the host and
    port, never a password), or the fleet is used before :meth:`Fleet.start`."""
