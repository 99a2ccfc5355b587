"""One replica of a web backend, for the fleet's multi-process tests (``test_fleet_replicas``).

Runs as its own process: a ``Fleet`` on the test's PostgreSQL, a ``Client(fleet=...)`` on
the test's emulator, and one of two jobs, telling the test what happens as JSON lines on
stdout (``{"event": "ready"}`` once the fleet is up, then one line per result):

- ``wait ID...``: wait for each task with ``client.poller()`` (a fast fixed schedule, so
  the test needs no long waits); a line per task as it ends;
- ``hammer SECONDS``: send GETs for one task through the shared rate budget, as fast as it
  lets them go, for ``SECONDS``; one line with how many were sent.

Every request carries ``X-Worker: <name>``, so the emulator's log tells who sent what.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import anyio

from aio88 import Client, RetryPolicy, Schedule
from aio88.fleet import Fleet


def say(**fields: object) -> None:
    """One JSON line to the test."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def wait_all(client: Client, ids: list[str], every: float) -> None:
    async with client.poller(schedule=Schedule.fixed(every), timeout=None) as poller:

        async def one(task_id: str) -> None:
            task = await poller.wait(task_id)
            say(event="done", id=task_id, status=task.status.value)

        async with anyio.create_task_group() as tg:
            for task_id in ids:
                tg.start_soon(one, task_id)


async def hammer(client: Client, task_id: str, seconds: float) -> None:
    sent = 0
    deadline = time.monotonic() + seconds

    async def sender() -> None:
        nonlocal sent
        while time.monotonic() < deadline:
            await client.videos.retrieve(task_id)
            sent += 1

    async with anyio.create_task_group() as tg:
        for _ in range(8):  # more senders than the rate allows: the budget decides
            tg.start_soon(sender)
    say(event="hammered", sent=sent)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", default="sk-test")
    parser.add_argument("--name", required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--every", type=float, default=0.1)
    parser.add_argument("job", choices=["wait", "hammer"])
    parser.add_argument("args", nargs="+")
    options = parser.parse_args(argv)
    async with (
        Fleet(options.dsn, lease=options.lease) as fleet,
        Client(
            options.key,
            base_url=options.base_url,
            fleet=fleet,
            rate_limit=options.rate,
            headers={"X-Worker": options.name},
            retry=RetryPolicy(attempts=10, retry_after_max=5),
        ) as client,
    ):
        say(event="ready", name=options.name, process=fleet.process_id)
        if options.job == "wait":
            await wait_all(client, options.args, options.every)
        else:
            await hammer(client, options.args[0], float(options.args[1]))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
