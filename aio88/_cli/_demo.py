"""``aio88 demo``: the whole job against an emulator in this process, with live progress
(the panel of :mod:`._live` on a terminal).

``aio88 demo --callbacks`` runs it callbacks first: every task is created with the
``callback_url`` of a receiver on loopback (``watch.webhook_handler()``), and polled on
``Schedule.fallback()`` only as a safety net; the summary compares its requests with what
polling alone would have made for the same tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .._billing import create_fate
from .._client import Client
from .._config import CREATE_RESENDS, RetryPolicy
from .._errors import Aio88Error
from .._models import GenerationTask, Kind, Status, Video
from .._outcome import Outcome
from .._retry import backoff_delay
from .._schedule import Schedule, plan_delay
from .._sending import SendMark, marking
from ._output import EXIT_FAILED, EXIT_OK, Printer, Tally, outcome_event
from ._run import writable_folder

if TYPE_CHECKING:
    from .._watch import Watch
    from ..testing import EmulatedTask


async def demo(args: argparse.Namespace, printer: Printer) -> int:
    """Create, poll and download N tasks on an in-process emulator; print a summary."""
    if getattr(args, "callbacks", False):
        return await demo_callbacks(args, printer)
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


async def demo_callbacks(args: argparse.Namespace, printer: Printer) -> int:
    """``aio88 demo --callbacks``: the same job, its tasks created with the ``callback_url``
    of a receiver on loopback and watched on ``Schedule.fallback()``, so each task's end
    comes by its callback; the summary adds what polling alone would have cost."""
    from ..testing import Emulator, Faults

    out = writable_folder(Path(args.out))
    faults = Faults(rate_429=args.rate_429, drop_rate=args.drop_rate, retry_after=None)
    retry = RetryPolicy(attempts=6, backoff_initial=0.05, backoff_max=1.0)
    tally = Tally(total=args.tasks)
    results: list[Outcome] = []
    created: list[GenerationTask | Video] = []
    unconfirmed = 0

    def on_update(task: GenerationTask | Video) -> None:
        tally.update(task)

    async with Emulator(
        dialect=args.dialect,
        duration=tuple(args.duration),
        failure_rate=args.failure_rate,
        faults=faults,
        seed=args.seed,
    ) as emulator:
        printer.event("emulator", url=emulator.base_url, dialect=args.dialect)
        async with (
            Client(api_key=emulator.api_key, base_url=emulator.base_url, retry=retry) as client,
            client.watch(
                [],
                concurrency=args.concurrency,
                download_dir=out,
                on_update=on_update,
                schedule=Schedule.fallback(),
            ) as outcomes,
            _receiver(outcomes) as callback_url,
        ):
            printer.event("receiver", url=callback_url)
            # Every task is expected before the first create, so the watch's iteration,
            # which runs alongside the creates, waits for the last of them.
            outcomes.expect(args.tasks)
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for outcome in outcomes:
                        results.append(outcome)
                        tally.finish(outcome)
                        outcome_event(printer, outcome)

                tg.start_soon(collect)
                for n in range(args.tasks):
                    name = f"create-{n + 1}"
                    kind: Kind = "video" if n % 2 else "generation"
                    prompt = f"demo video {n + 1}: a red fox in the snow"
                    result = await create_one(
                        client, kind, prompt, name, retry, printer, callback_url=callback_url
                    )
                    if isinstance(result, Outcome):
                        results.append(result)
                        tally.failed += 1
                        outcome_event(printer, result)
                        outcomes.forget()
                    elif result is None:
                        unconfirmed += 1
                        tally.unconfirmed += 1
                        outcomes.forget()
                    else:
                        created.append(result)
                        tally.update(result)
                        outcomes.add([result], fresh=True)
                    printer.progress(tally)
                printer.event(
                    "created",
                    tasks=len(created),
                    seconds=round(time.monotonic() - tally.started, 1),
                )
        stats = emulator.stats()
        requests = len(emulator.requests)
        polling_only = sum(
            polls_without_callbacks(
                emulator.tasks[task.id],
                Schedule(),
                progress=not (args.dialect == "docs" and isinstance(task, GenerationTask)),
            )
            for task in created
        )
    tasks = len(created)
    everyone = len(results) + unconfirmed  # the summary's own "requests per task" divisor
    return _finish_summary(
        printer,
        tally,
        results,
        out,
        requests=requests,
        unconfirmed=unconfirmed,
        extra={
            "callbacks": stats.callbacks.get("delivered", 0),
            "polls": stats.polls,
            "polls_per_task": round(stats.polls / tasks, 2) if tasks else None,
            "polls_polling_only": polling_only,
            "requests_per_task_polling_only": (
                round((requests - stats.polls + polling_only) / everyone, 1) if everyone else None
            ),
        },
    )


@contextlib.asynccontextmanager
async def _receiver(outcomes: Watch) -> AsyncIterator[str]:
    """A callback receiver on 127.0.0.1 (a free port) serving the watch's handler at
    ``/callback``; yields its URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/callback", outcomes.webhook_handler())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/callback"
    finally:
        await runner.cleanup()


class _Polled:
    """A simulated task's polling state, as :func:`plan_delay` reads and updates it."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.polls = 0
        self.anchor_t = 0.0
        self.anchor_p = -1


def polls_without_callbacks(task: EmulatedTask, schedule: Schedule, *, progress: bool) -> int:
    """The polls ``schedule`` makes to see ``task`` end, watched fresh from its create
    (its first poll after ``schedule.first``), as the poller decides each delay
    (:func:`plan_delay`), with the jitter at its mean and no server hint.

    The task's end is the emulator's own timeline (``task.phase``); ``progress``: whether
    its answers report progress (the docs dialect's generations do not).
    """
    state = _Polled(task.created)
    now = task.created + schedule.first
    while True:
        state.polls += 1
        phase, percent = task.phase(now)
        if phase in ("succeeded", "failed"):
            return state.polls
        status = Status.QUEUED if phase == "queued" else Status.IN_PROGRESS
        now += plan_delay(
            schedule, state, now, status, percent if progress else None, None, lambda: 0.5
        )


async def create_one(
    client: Client,
    kind: Kind,
    prompt: str,
    name: str,
    retry: RetryPolicy,
    printer: Printer,
    *,
    callback_url: str | None = None,
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
                    return await client.videos.create(
                        model="sora-2", prompt=prompt, seconds="4", callback_url=callback_url
                    )
                return await client.generations.create(
                    model="kling-v1", prompt=prompt, duration=5, callback_url=callback_url
                )
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
    extra: dict[str, Any] | None = None,
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
        **(extra or {}),
        bytes=tally.bytes,
        files=str(out),
    )
    # Unconfirmed is not ok: its task may exist unwatched (the exit codes of docs/cli.md).
    return EXIT_FAILED if failures or unconfirmed else EXIT_OK
