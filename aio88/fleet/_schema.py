"""The fleet's tables and functions in PostgreSQL, created or migrated at start-up.

One transaction holds ``pg_advisory_xact_lock`` while it reads ``schema_version`` and
applies what is missing: replicas start together, and two concurrent ``CREATE TABLE IF
NOT EXISTS`` of one table can still fail with a unique violation in the catalog. A
database whose version is newer than this aio88 knows is refused, never downgraded.

Tables (version 1):

- ``aio88_meta(key, value)``: ``schema_version``.
- ``aio88_processes``: one row per live process (its heartbeat, its lease length).
- ``aio88_tasks``: one row per task some process waits on: its lease holder
  (``owner``, ``lease_until``) and, once it ended, ``finished_at`` and the task's JSON.
- ``aio88_rates``: one row per rate budget (a digest of the API key and origin): the
  token bucket, the 429 pause and the adaptive rate, all in the database's clock.

Channels: ``aio88_finished`` and ``aio88_hint`` (payload: a task id), ``aio88_rate``
(payload: JSON of a rate budget's pause, see ``_rate.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

__all__ = [
    "CHANNEL_FINISHED",
    "CHANNEL_HINT",
    "CHANNEL_RATE",
    "SCHEMA_VERSION",
    "SchemaTooNew",
    "migrate",
]

#: The schema this code writes and reads.
SCHEMA_VERSION = 1
#: ``pg_advisory_xact_lock``'s key for migrations: "aio88" in ASCII, arbitrary but fixed.
MIGRATION_LOCK = 0x616_96F_3838
#: Notified with a task id when a process records the task's end.
CHANNEL_FINISHED = "aio88_finished"
#: Notified with a task id when a callback for it reached some process.
CHANNEL_HINT = "aio88_hint"
#: Notified when a 429 pauses a rate budget (JSON, see ``_rate.py``).
CHANNEL_RATE = "aio88_rate"

_VERSION_1 = """
CREATE TABLE IF NOT EXISTS aio88_processes (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    lease_seconds double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS aio88_tasks (
    task_id text PRIMARY KEY,
    kind text NOT NULL,
    owner text,
    lease_until timestamptz,
    finished_at timestamptz,
    task_json bytea,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS aio88_tasks_owner ON aio88_tasks (owner);
CREATE INDEX IF NOT EXISTS aio88_tasks_finished_at ON aio88_tasks (finished_at)
    WHERE finished_at IS NOT NULL;

-- A token bucket refilled at `amount` per second (the adaptive rate: `ceiling` lowered by
-- 429s, growing back from `amount_since`), holding at most the caller's capacity; tokens
-- may go below zero: a block taken ahead is due once the balance is back at zero.
CREATE TABLE IF NOT EXISTS aio88_rates (
    name text PRIMARY KEY,
    ceiling double precision,
    amount double precision,
    amount_since timestamptz NOT NULL DEFAULT clock_timestamp(),
    tokens double precision NOT NULL DEFAULT 0,
    stamp timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_until timestamptz NOT NULL DEFAULT 'epoch',
    signalled_at timestamptz NOT NULL DEFAULT 'epoch',
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The adaptive rate at `at`: `amount` grown back by time alone towards `ceiling`.
CREATE OR REPLACE FUNCTION aio88_rate_now(
    r aio88_rates, p_floor double precision, p_recovery double precision, at timestamptz
) RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN r.ceiling IS NULL THEN NULL
        WHEN r.amount >= r.ceiling THEN r.ceiling
        ELSE least(
            r.ceiling,
            r.amount + greatest(0, extract(epoch FROM at - r.amount_since))
                * (r.ceiling - p_floor) / p_recovery
        )
    END
$$;

-- Take `p_want` tokens of budget `p_name` (made on first use). Returns after how many
-- seconds from the database's now they are due (the 429 pause included), the pause left,
-- the rate in force, and how many seconds time alone needs to bring it back to the ceiling.
CREATE OR REPLACE FUNCTION aio88_take(
    p_name text, p_rate double precision, p_want integer, p_capacity double precision,
    p_floor double precision, p_recovery double precision, p_return integer,
    OUT due double precision, OUT paused double precision,
    OUT rate double precision, OUT lowered_for double precision
) LANGUAGE plpgsql AS $$
DECLARE
    now_ timestamptz := clock_timestamp();
    r aio88_rates;
    start_ timestamptz;
    elapsed double precision;
    tokens_ double precision;
BEGIN
    INSERT INTO aio88_rates AS t (name, ceiling, amount, tokens, stamp)
        VALUES (p_name, p_rate, p_rate, p_capacity, now_)
        ON CONFLICT (name) DO NOTHING;
    SELECT * INTO r FROM aio88_rates WHERE name = p_name FOR UPDATE;
    IF r.ceiling IS DISTINCT FROM p_rate THEN  -- the caller's configuration is the latest
        r.amount := least(coalesce(r.amount, p_rate), p_rate);
        r.ceiling := p_rate;
    END IF;
    start_ := greatest(now_, r.paused_until);
    paused := greatest(0, extract(epoch FROM r.paused_until - now_));
    rate := aio88_rate_now(r, p_floor, p_recovery, start_);
    IF rate >= r.ceiling THEN
        lowered_for := 0;
    ELSE
        lowered_for := (r.ceiling - rate) / ((r.ceiling - p_floor) / p_recovery);
    END IF;
    elapsed := extract(epoch FROM start_ - r.stamp);
    tokens_ := r.tokens;
    IF elapsed > 0 THEN
        tokens_ := least(p_capacity, tokens_ + elapsed * rate);
        r.stamp := start_;
    END IF;
    -- Tokens a process took and could not use in time (a late wake-up) come back: left
    -- as debt, every retake would push every process's next turn further out.
    tokens_ := least(p_capacity, tokens_ + greatest(0, p_return)) - p_want;
    due := extract(epoch FROM start_ - now_);
    IF tokens_ < 0 THEN
        due := due - tokens_ / rate;
    END IF;
    UPDATE aio88_rates SET
        ceiling = r.ceiling, amount = r.amount, tokens = tokens_, stamp = r.stamp,
        updated_at = now_
    WHERE name = p_name;
END
$$;

-- A 429 for budget `p_name` happened `p_delay` seconds before now, for a request sent
-- `p_age` seconds before that: pause it for `p_pause` seconds and halve the rate, unless
-- the request was sent before the last halving (then only the pause counts). Notifies
-- every process; returns whether it counted as a new signal.
CREATE OR REPLACE FUNCTION aio88_signal(
    p_name text, p_rate double precision, p_floor double precision,
    p_recovery double precision, p_delay double precision, p_age double precision,
    p_pause double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    now_ timestamptz := clock_timestamp();
    event timestamptz := now_ - make_interval(secs => greatest(0, p_delay));
    sent timestamptz := event - make_interval(secs => greatest(0, p_age));
    counted boolean;
    r aio88_rates;
BEGIN
    INSERT INTO aio88_rates (name, ceiling, amount, tokens, stamp)
        VALUES (p_name, p_rate, p_rate, 0, now_)
        ON CONFLICT (name) DO NOTHING;
    SELECT * INTO r FROM aio88_rates WHERE name = p_name FOR UPDATE;
    r.paused_until := greatest(r.paused_until, event + make_interval(secs => p_pause));
    counted := sent >= r.signalled_at;
    IF counted THEN
        r.signalled_at := event;
        IF r.ceiling IS NOT NULL THEN
            r.amount := greatest(p_floor, aio88_rate_now(r, p_floor, p_recovery, event) / 2);
            r.amount_since := event;
            r.tokens := least(r.tokens, 0);
        END IF;
    END IF;
    UPDATE aio88_rates SET
        paused_until = r.paused_until, signalled_at = r.signalled_at, amount = r.amount,
        amount_since = r.amount_since, tokens = r.tokens, updated_at = now_
    WHERE name = p_name;
    PERFORM pg_notify('aio88_rate', json_build_object(
        'name', p_name,
        'paused', greatest(0, extract(epoch FROM r.paused_until - now_)),
        'signalled', extract(epoch FROM now_ - r.signalled_at)
    )::text);
    RETURN counted;
END
$$;

-- `p_count` requests of budget `p_name` succeeded: one more unit of rate per window of
-- successes (TCP's additive increase), up to the ceiling.
CREATE OR REPLACE FUNCTION aio88_succeeded(
    p_name text, p_count integer, p_floor double precision, p_recovery double precision
) RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE
    now_ timestamptz := clock_timestamp();
    r aio88_rates;
    amount_ double precision;
BEGIN
    SELECT * INTO r FROM aio88_rates WHERE name = p_name FOR UPDATE;
    IF NOT FOUND OR r.ceiling IS NULL THEN
        RETURN NULL;
    END IF;
    amount_ := aio88_rate_now(r, p_floor, p_recovery, now_);
    IF amount_ < r.ceiling THEN
        FOR i IN 1 .. p_count LOOP
            amount_ := least(r.ceiling, amount_ + 1.0 / greatest(amount_, 1.0));
        END LOOP;
        UPDATE aio88_rates SET amount = amount_, amount_since = now_, updated_at = now_
        WHERE name = p_name;
    END IF;
    RETURN amount_;
END
$$;

-- How long budget `p_name` stays paused (0 when not), in seconds from now.
CREATE OR REPLACE FUNCTION aio88_paused(p_name text) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT greatest(0, extract(epoch FROM paused_until - clock_timestamp()))
         FROM aio88_rates WHERE name = p_name),
        0)
$$;
"""

#: Each version's DDL, applied in order from the database's version + 1.
MIGRATIONS: dict[int, str] = {1: _VERSION_1}


class SchemaTooNew(Exception):
    """The database's schema is newer than this aio88 knows: its version."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


async def migrate(connection: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> int:
    """Create or bring up to date the fleet's schema, in one transaction under an
    advisory lock; returns the version the database had before (0: none).

    Raises:
        SchemaTooNew: The database's schema is newer than :data:`SCHEMA_VERSION`.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS aio88_meta (key text PRIMARY KEY, value text NOT NULL)"
        )
        found = await connection.fetchval(
            "SELECT value FROM aio88_meta WHERE key = 'schema_version'"
        )
        version = int(found) if found is not None else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(version)
        for step in range(version + 1, SCHEMA_VERSION + 1):
            await connection.execute(MIGRATIONS[step])
        if version < SCHEMA_VERSION:
            await connection.execute(
                "INSERT INTO aio88_meta (key, value) VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(SCHEMA_VERSION),
            )
    return version
