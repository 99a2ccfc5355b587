"""The fleet's exception (defined in :mod:`aio88._errors`) and which database failures
mean what."""

from __future__ import annotations

import asyncio

import asyncpg

from .._config import FLEET_RECONNECT_MAX, FLEET_RECONNECT_MIN, RetryPolicy
from .._errors import FleetError

__all__ = ["DB_ERRORS", "RECONNECT_BACKOFF", "UNREACHABLE", "FleetError"]

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
#: cancelling statements or out of connections; the database not taking connections or
#: read-only (a fail-over in progress); a transaction rolled back for a conflict
#: (serialization, deadlock); and asyncpg's "another operation is in progress" on a pooled
#: connection whose session the server cut while it sat idle (after
#: ``pg_terminate_backend``).
UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.TransactionRollbackError,
)

#: How the fleet's parts wait between tries while the database is out of reach (with
#: :func:`aio88._retry.half_jitter`): a reconnect, a statement, a rate token.
RECONNECT_BACKOFF = RetryPolicy(
    backoff_initial=FLEET_RECONNECT_MIN, backoff_max=FLEET_RECONNECT_MAX
)
