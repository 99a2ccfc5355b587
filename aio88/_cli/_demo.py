"""``aio88 demo``: the whole job against an emulator in this process, with live progress
(the panel of :mod:`._live` on a terminal)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from .._billing import create_fate
from .._client import Client
from .._config import CREATE_RESENDS, RetryPolicy
from .._errors import Aio88Error
from .._models import GenerationTask, Kind, Video
from .._outcome import Outcome
from .._retry import backoff_delay
from .._schedule import Schedule
from .._sending import SendMark, marking
from ._output import EXIT_FAILED, EXIT_OK, Printer, Tally, outcome_event
from ._run import writable_folder


async def demo(args: argparse.Namespace, printer: Printer) -> int:
    """Create, poll and download N tasks on an in-process emulator; print a summary."""
    from ..testing import Emulator, Faults

    out = writable_folder(Path(args.out))
    faults = Faults(rate_429=args.rate_429, drop_rate=args.drop_rate, retry_after=None)
    retry = RetryPolicy(attempts=6, backoff_initial=0.05, backoff_max=1.0)
    async with Emulator(
        dialect=args.dialect,
        duration=tuple(args.duration),
        failure_rate=args.failure_rate,
        faults=faults,
        seed=args.seed,
    ) as emulator:
        printer.event("emulator", url=emulator.base_url, dialect=args.dialect)
        async with Client(
            api_key=emulator.api_key, base_url=emulator.base_url, retry=retry
        ) as client:
            tally = Tally(total=args.tasks)
            created: list[GenerationTask | Video] = []
            not_created: list[Outcome] = []
            unconfirmed = 0
            for n in range(args.tasks):
                name = f"create-{n + 1}"
                kind: Kind = "video" if n % 2 else "generation"
                prompt = f"demo video {n + 1}: a red fox in the snow"
                result = await create_one(client, kind, prompt, name, retry, printer)
                if isinstance(result, Outcome):
                    not_created.append(result)
                    tally.failed += 1
                    outcome_event(printer, result)
                elif result is None:
                    unconfirmed += 1
                    tally.unconfirmed += 1
                else:
                    created.append(result)
                    tally.update(result)
                printer.progress(tally)
            printer.event(
                "created", tasks=len(created), seconds=round(time.monotonic() - tally.started, 1)
            )
            results = not_created + await _watch_with_progress(
                client, created, out, args.concurrency, printer, tally, fresh=True
            )
        requests = len(emulator.requests)
    return _finish_summary(printer, tally, results, out, requests=requests, unconfirmed=unconfirmed)


async def create_one(
    client: Client, kind: Kind, prompt: str, name: str, retry: RetryPolicy, printer: Printer
) -> GenerationTask | Video | Outcome | None:
    """One demo task's create, its failures handled as ``aio88 run`` handles them.

    Returns the task; or an :class:`Outcome` with the error when the create provably made
    nothing (refused, or still failing after a few resends); or ``None`` when it is
    *unconfirmed*: sent, and its answer lost, so the server may have the task (on 88API,
    billed). That one is reported and never sent again: a resend could pay twice.

    The client itself already retried what was provably not taken (nothing written, or a
    429) with ``retry``; what reaches here failed after those tries, or was sent.
    """
    resends = 0
    while True:
        mark = SendMark()
        try:
            with marking(mark):
                if kind == "video":
                    return await client.videos.create(model="sora-2", prompt=prompt, seconds="4")
                return await client.generations.create(model="kling-v1", prompt=prompt, duration=5)
        except (ValueError, TypeError) as exc:  # refused here, before anything was sent
            return Outcome(name, kind, None, exc)
        except Aio88Error as exc:
            fate = create_fate(exc, sent=mark.sent)
            if fate.state == "unconfirmed":
                printer.problem("unconfirmed", id=name, kind=kind, error=fate.why)
                return None
            if fate.state == "not_created" and resends < CREATE_RESENDS:
                # Nothing was created (a 429 past the client's retries, a refunded 5xx,
                # a connection that never carried the request): safe to send again.
                printer.detail("resend", id=name, error=fate.why)
                resends += 1
                await anyio.sleep(backoff_delay(resends, retry))
                continue
            return Outcome(name, kind, None, exc)


async def _watch_with_progress(
    client: Client,
    tasks: Sequence[GenerationTask | Video | str],
    out: Path,
    concurrency: int,
    printer: Printer,
    tally: Tally,
    *,
    fresh: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
    kind: Kind = "video",
) -> list[Outcome]:
    """Watch tasks to the end with downloads, drawing progress as they go."""
    results: list[Outcome] = []

    def on_update(task: GenerationTask | Video) -> None:
        tally.update(task)

    async with client.watch(
        [],
        kind=kind,
        concurrency=concurrency,
        download_dir=out,
        on_update=on_update,
        schedule=Schedule(),
    ) as outcomes:
        outcomes.add(tasks, fresh=fresh)
        printer.progress(tally)  # the live panel redraws on its own timer from here
        async for outcome in outcomes:
            results.append(outcome)
            tally.finish(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
            else:
                outcome_event(printer, outcome)
    return results


def _finish_summary(
    printer: Printer,
    tally: Tally,
    results: list[Outcome],
    out: Path,
    *,
    requests: int,
    unconfirmed: int,
) -> int:
    elapsed = time.monotonic() - tally.started
    failures = [o for o in results if not o.ok]
    tasks = len(results) + unconfirmed
    printer.summary(
        tasks=tasks,
        succeeded=len(results) - len(failures),
        failed=len(failures),
        unconfirmed=unconfirmed,
        seconds=round(elapsed, 1),
        tasks_per_second=round(tasks / elapsed, 2) if elapsed else None,
        requests=requests,
        requests_per_task=round(requests / tasks, 1) if tasks else None,
        bytes=tally.bytes,
        files=str(out),
    )
    # Unconfirmed is not ok: its task may exist unwatched (the exit codes of docs/cli.md).
    return EXIT_FAILED if failures or unconfirmed else EXIT_OK
