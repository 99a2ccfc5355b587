"""Ctrl-C (or SIGTERM) during ``aio88 run``: the first stops new creates, lets the creates
already sent answer (a few seconds at most), then ends the run with the ledger true; a
second ends it at once, with the same bookkeeping. Polls and downloads just stop: a rerun
takes them up again (a download resumes its ``.part``)."""

from __future__ import annotations

import signal
import sys
from collections import Counter

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._config import INTERRUPT_GRACE
from ._creates import Creates
from ._output import Printer


class Interrupt:
    """Listens for SIGINT and SIGTERM while a run's task group lives."""

    def __init__(self, creates: Creates, printer: Printer) -> None:
        self._creates = creates
        self._printer = printer
        self.signal: int | None = None
        """The first signal received, if any (the exit code is 128 + it)."""

    async def listen(
        self, run: TaskGroup, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Until ``run`` is cancelled: handle the signals, ending ``run`` as they ask.
        Started with ``await run.start(...)``, so that it listens before the first create.
        (POSIX signals: on Windows, Ctrl-C stays Python's KeyboardInterrupt.)"""
        if sys.platform == "win32":  # pragma: no cover - asyncio has no signal handlers there
            task_status.started()
            await anyio.sleep_forever()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if self.signal is None:
                    self.signal = int(signum)
                    self._printer.note(
                        "stopping: no new creates; creates already sent have "
                        f"{INTERRUPT_GRACE:g} s to answer (press Ctrl-C again to stop now)"
                    )
                    self._creates.stop(INTERRUPT_GRACE)
                    run.start_soon(self._end_when_settled, run)
                else:
                    self._creates.stop_now()
                    run.cancel_scope.cancel()

    async def _end_when_settled(self, run: TaskGroup) -> None:
        await self._creates.settled.wait()
        run.cancel_scope.cancel()

    def explain(self, counts: Counter[str]) -> None:
        """Say where the jobs stand and what the rerun will do with each."""
        created, pending = counts["submitted"] + counts["download_failed"], counts["pending"]
        unconfirmed = counts["unconfirmed"]
        self._printer.problem(
            "interrupted",
            signal=self.signal,
            created=created,
            pending=pending,
            unconfirmed=unconfirmed,
        )
        self._printer.note(
            f"interrupted. Rerun the same command: it polls and downloads the {created} "
            f"task(s) created, and creates the {pending} job(s) never sent"
            + (
                f"; {unconfirmed} job(s) were sent and their answer never came "
                "(unconfirmed: see --resend-unconfirmed)"
                if unconfirmed
                else ""
            )
        )
