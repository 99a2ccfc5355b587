"""``aio88 demo``: the whole job against an emulator in this process, with live progress."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from .._client import Client
from .._config import RetryPolicy
from .._errors import APIConnectionError
from .._models import GenerationTask, Kind, Video
from .._outcome import Outcome
from .._schedule import Schedule
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
            lost: list[Outcome] = []
            for n in range(args.tasks):
                prompt = f"demo video {n + 1}: a red fox in the snow"
                task: GenerationTask | Video
                try:
                    if n % 2:
                        task = await client.videos.create(
                            model="sora-2", prompt=prompt, seconds="4"
                        )
                    else:
                        task = await client.generations.create(
                            model="kling-v1", prompt=prompt, duration=5
                        )
                except APIConnectionError as exc:
                    # A create whose answer was lost may still have been processed (and
                    # billed): aio88 does not send it again. Shown as a failed task.
                    failure = Outcome(f"create-{n + 1}", "video", None, exc)
                    lost.append(failure)
                    tally.failed += 1
                    outcome_event(printer, failure)
                    continue
                created.append(task)
                tally.update(task)
                printer.progress(tally)
            printer.event(
                "created", tasks=len(created), seconds=round(time.monotonic() - tally.started, 1)
            )
            results = lost + await _watch_with_progress(
                client, created, out, args.concurrency, printer, tally, fresh=True
            )
        requests = len(emulator.requests)
    return _finish_summary(printer, tally, results, out, requests=requests)


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
        printer.progress(tally)

    async with client.watch(
        [],
        kind=kind,
        concurrency=concurrency,
        download_dir=out,
        on_update=on_update,
        schedule=Schedule(),
    ) as outcomes:
        outcomes.add(tasks, fresh=fresh)
        async with anyio.create_task_group() as tg:

            async def redraw() -> None:
                while True:
                    printer.progress(tally, force=True)
                    await anyio.sleep(0.25)

            tg.start_soon(redraw)
            async for outcome in outcomes:
                results.append(outcome)
                tally.finish(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
                else:
                    outcome_event(printer, outcome)
                printer.progress(tally)
            tg.cancel_scope.cancel()
    return results


def _finish_summary(
    printer: Printer, tally: Tally, results: list[Outcome], out: Path, *, requests: int
) -> int:
    elapsed = time.monotonic() - tally.started
    failures = [o for o in results if not o.ok]
    printer.summary(
        tasks=len(results),
        succeeded=len(results) - len(failures),
        failed=len(failures),
        seconds=round(elapsed, 1),
        tasks_per_second=round(len(results) / elapsed, 2) if elapsed else None,
        requests=requests,
        requests_per_task=round(requests / len(results), 1) if results else None,
        bytes=tally.bytes,
        files=str(out),
    )
    return EXIT_FAILED if failures else EXIT_OK
