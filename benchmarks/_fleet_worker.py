"""One process of ``bench_fleet``: a replica of a web backend, with or without a fleet.

    python -m benchmarks._fleet_worker --base-url URL [--dsn DSN] poll IDS_FILE
    python -m benchmarks._fleet_worker --base-url URL --dsn DSN --rate R hammer TASK_ID SECONDS

It says ``{"event": "ready"}`` on stdout once its client (and fleet) are up, then obeys
one command per line on stdin, answering each with one JSON line:

- ``poll``: waits on every id of ``IDS_FILE`` (one per line) with ``client.poller()`` on a
  fixed schedule. ``status`` answers its polls so far and how many of the ids it holds
  the lease of; ``start`` and ``stop`` bound the measured interval (``stop`` answers the
  polls and the CPU seconds spent in it, then the process ends);
- ``hammer``: on ``go``, sends GETs for one task through the fleet's rate budget, from
  more senders than the budget allows, for ``SECONDS``; answers how many it sent.

CPU is this process's own (``getrusage``: user + system, every thread), so a busy machine
makes the run slower but does not add to the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import resource
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from aio88 import Client, RetryPolicy, Schedule


def say(**fields: object) -> None:
    """One JSON line to the benchmark."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def command() -> str:
    """The next command from the benchmark; ``""`` once it has gone away."""
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


def cpu() -> tuple[float, float]:
    """This process's user and system CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


@asynccontextmanager
async def client_of(options: argparse.Namespace) -> AsyncIterator[tuple[Client, Any]]:
    """The client, in a fleet when ``--dsn`` is given; and the fleet (or None)."""
    async with contextlib.AsyncExitStack() as stack:
        fleet = None
        if options.dsn:
            from aio88.fleet import Fleet  # only the fleet runs need asyncpg

            fleet = await stack.enter_async_context(Fleet(options.dsn, lease=options.lease))
        client = await stack.enter_async_context(
            Client(
                "sk-test",
                base_url=options.base_url,
                fleet=fleet,
                rate_limit=options.rate,
                retry=RetryPolicy(attempts=10, retry_after_max=5),
            )
        )
        yield client, fleet


async def poll(options: argparse.Namespace) -> None:
    ids = Path(options.args[0]).read_text().split()
    async with (
        client_of(options) as (client, fleet),
        client.poller(
            schedule=Schedule.fixed(options.every),
            timeout=None,
            concurrency=options.concurrency,
        ) as poller,
        anyio.create_task_group() as tg,
    ):
        for task_id in ids:
            tg.start_soon(functools.partial(poller.wait, task_id, kind="video"))
        say(event="ready")
        start: tuple[float, float, float, int] | None = None
        while True:
            line = await command()
            polls = poller.stats().polls
            if line == "status":
                held = len(ids) if fleet is None else sum(map(fleet.leases.holds, ids))
                say(event="status", polls=polls, held=held)
            elif line == "start":
                start = (time.monotonic(), *cpu(), polls)
                say(event="started")
            elif line == "stop" and start is not None:
                user, system = cpu()
                say(
                    event="result",
                    seconds=time.monotonic() - start[0],
                    user=user - start[1],
                    system=system - start[2],
                    polls=polls - start[3],
                    errors=poller.stats().errors,
                )
                break
            elif not line:
                break
        tg.cancel_scope.cancel()


async def hammer(options: argparse.Namespace) -> None:
    task_id, seconds = options.args[0], float(options.args[1])
    async with client_of(options) as (client, _):
        say(event="ready")
        if await command() != "go":
            return
        sent = 0
        deadline = time.monotonic() + seconds

        async def sender() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                await client.videos.retrieve(task_id)
                sent += 1

        async with anyio.create_task_group() as tg:
            for _ in range(options.senders):  # more than the budget lets go: it decides
                tg.start_soon(sender)
        say(event="hammered", sent=sent)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--dsn", default=None, help="in a fleet on this database")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("job", choices=["poll", "hammer"])
    parser.add_argument("args", nargs="+")
    options = parser.parse_args(argv)
    await (poll if options.job == "poll" else hammer)(options)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
