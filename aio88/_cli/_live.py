"""The live display on a terminal, drawn with ``rich`` (the ``aio88[cli]`` extra).

A batch (``demo``, ``run``) gets a panel pinned at the bottom of the screen: the overall
bar, tasks per second, ETA, counts by state, bytes and MB/s, and the tasks in flight the
furthest from done with the progress the server reports. ``rich`` redraws it on its own timer from
the :class:`~aio88._cli._output.Tally`, so the clock moves even when no task does. The
one-task commands get a spinner (``wait``) or a byte bar (``download``).

``rich`` is imported here only, and only once a display is wanted: ``import aio88`` and
the plain output work without it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from .._models import GenerationTask, Video


class Tally(Protocol):
    """What the panel reads of :class:`aio88._cli._output.Tally` (a protocol, so that
    this module does not import the one that imports it)."""

    total: int
    queued: int
    running: int
    downloading: int
    done: int
    failed: int
    unconfirmed: int
    bytes: int
    started: float

    def slowest(self, count: int, now: float) -> list[tuple[str, str, int | None, float]]:
        """The unfinished tasks furthest from done: id, state, percent, first seen."""
        ...


#: Redraws per second: smooth enough for a clock and a bar, cheap for the process.
REFRESH_PER_SECOND = 8
#: The unfinished tasks the panel lists (those furthest from done).
SLOWEST = 5
#: Colours of the counts by state.
STATE_STYLES = {
    "queued": "blue",
    "running": "cyan",
    "downloading": "magenta",
    "done": "green",
    "failed": "red",
    "unconfirmed": "yellow",
}
#: Summary keys that are bad news when not zero.
_BAD_KEYS = {
    "failed",
    "unconfirmed",
    "rejected",
    "timed_out",
    "missing",
    "changed",
    "download_failed",
    "pending",
}


def available() -> bool:
    """Whether ``rich`` can be imported (the ``aio88[cli]`` extra is installed)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def make_console(stream: TextIO) -> Console:
    """A console writing to ``stream`` (the printer's stdout), with no markup guessing:
    task ids and paths print as they are."""
    from rich.console import Console

    return Console(file=stream, highlight=False)


def clock(seconds: float | None) -> str:
    """Seconds as ``m:ss`` or ``h:mm:ss``; ``-`` for unknown."""
    if seconds is None:
        return "-:--"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class Rates:
    """Tasks and bytes per second over the last :attr:`WINDOW` seconds, so that the rate
    and the ETA follow the batch as it speeds up or slows down (the whole run's average
    until a window's worth of samples exists)."""

    WINDOW = 15.0

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque()

    def sample(self, now: float, started: float, finished: int, nbytes: int) -> tuple[float, float]:
        """Record a sample; returns ``(tasks per second, bytes per second)``."""
        samples = self._samples
        samples.append((now, finished, nbytes))
        while len(samples) > 2 and now - samples[1][0] >= self.WINDOW:
            samples.popleft()
        then, finished_then, bytes_then = samples[0]
        if now - then < self.WINDOW / 3:
            then, finished_then, bytes_then = started, 0, 0
        span = now - then
        if span <= 0:
            return 0.0, 0.0
        return (finished - finished_then) / span, (nbytes - bytes_then) / span


def panel(
    tally: Tally, rates: Rates, *, title: str, now: float | None = None, final: bool = False
) -> RenderableType:
    """The batch panel for ``tally`` at ``now``; ``final``: without the task list."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic() if now is None else now
    finished = tally.done + tally.failed + tally.unconfirmed
    total = max(tally.total, finished)
    elapsed = now - tally.started
    per_task, per_byte = rates.sample(now, tally.started, finished, tally.bytes)
    if final and elapsed > 0:  # the whole run's pace, as the summary gives it
        per_task, per_byte = finished / elapsed, tally.bytes / elapsed
    remaining = total - finished
    eta = 0.0 if not remaining else remaining / per_task if per_task > 0 else None

    head = Table.grid(padding=(0, 2), expand=True)
    head.add_column(ratio=1)
    head.add_column(justify="right", no_wrap=True)
    share = finished / total if total else 1.0
    head.add_row(
        ProgressBar(total=total or 1, completed=finished if total else 1),
        Text(f"{finished:,}/{total:,}  {share:4.0%}", style="bold"),
    )
    speed = Text.assemble(
        (f"{per_task:,.1f}", "bold"),
        " tasks/s   ETA ",
        (clock(eta), "bold"),
        "   elapsed ",
        (clock(elapsed), "bold"),
        "   ",
        (f"{tally.bytes / 1e6:,.1f} MB", "bold"),
        "  ",
        (f"{per_byte / 1e6:,.1f}", "bold"),
        " MB/s",
    )
    counts = Text()
    for state, style in STATE_STYLES.items():
        value: int = getattr(tally, state)
        if state == "unconfirmed" and not value:
            continue  # only where it happens: it needs a decision
        if counts:
            counts.append("   ")
        counts.append(f"{state} ", style=style)
        counts.append(f"{value:,}", style=f"bold {style}")
    parts: list[RenderableType] = [head, speed, counts]
    slowest = [] if final else tally.slowest(SLOWEST, now)
    if slowest:
        parts.append(_slowest_table(slowest, now))
    return Panel(Group(*parts), title=Text(title, style="bold"), title_align="left")


def _slowest_table(slowest: list[tuple[str, str, int | None, float]], now: float) -> Table:
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table("slowest", "state", "progress", "", "for", box=None, padding=(0, 2, 0, 0))
    table.columns[0].style = "dim"
    table.columns[3].justify = table.columns[4].justify = "right"
    for task_id, state, percent, since in slowest:
        bar = (
            Text("-", style="dim")
            if percent is None
            else ProgressBar(total=100, completed=percent, width=24)
        )
        table.add_row(
            task_id,
            Text(state, style=STATE_STYLES.get(state, "")),
            bar,
            "" if percent is None else f"{percent}%",
            clock(now - since),
        )
    return table


def summary_table(fields: dict[str, Any], human: Any) -> Table:
    """The closing summary as a table; ``human`` formats each value."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title="summary", title_justify="left", show_header=False, box=box.ROUNDED, min_width=40
    )
    table.add_column(style="dim")
    table.add_column(justify="right")
    for key, value in fields.items():
        bad = key in _BAD_KEYS and bool(value)
        table.add_row(key.replace("_", " "), Text(human(value), style="bold red" if bad else ""))
    return table


class Board:
    """The batch panel, pinned at the bottom while it runs; lines printed through
    :attr:`console` (and, on a terminal, stderr: notes and the ``-v`` log) scroll above."""

    def __init__(self, console: Console, tally: Tally, title: str) -> None:
        from rich.live import Live

        self.console = console
        self.tally = tally
        self.title = title
        self.rates = Rates()
        self._final = False
        stderr_too = sys.stderr.isatty()  # else stderr is a file: leave it one
        self._live: Live = Live(
            console=console,
            get_renderable=self._render,
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stdout=True,
            redirect_stderr=stderr_too,
        )
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def _render(self) -> RenderableType:
        return panel(self.tally, self.rates, title=self.title, final=self._final)

    def start(self) -> None:
        """Pin the panel; redraws run on rich's own thread from here on."""
        original = sys.stderr
        self._live.start()
        if sys.stderr is not original:
            # The -v log's handler kept the real stderr: point it at rich's proxy, which
            # prints above the panel instead of through it.
            for handler in logging.getLogger("aio88").handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                    self._handlers.append((handler, handler.setStream(sys.stderr)))

    def stop(self) -> None:
        """Draw the final state (bar, counts, rate; no task list) and unpin it."""
        self._final = True
        self._live.refresh()
        self._live.stop()
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()


class Activity:
    """A one-task command's transient line: a spinner with the task's status and
    progress (``wait``), or a byte bar with speed and ETA (``download``)."""

    def __init__(self, console: Console, label: str, *, download: bool) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        if download:
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns += [TaskProgressColumn(), TimeElapsedColumn()]
        self._label = label
        self._progress: Progress = Progress(
            *columns,
            console=console,
            transient=True,
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stderr=sys.stderr.isatty(),
        )
        self._id: TaskID = self._progress.add_task(label, total=None)

    def __enter__(self) -> Activity:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def task(self, task: GenerationTask | Video) -> None:
        """The task changed: show its status and progress (a pulse while unknown)."""
        percent = task.progress
        self._progress.update(
            self._id,
            description=f"{self._label}  {task.status.value}",
            total=None if percent is None else 100,
            completed=percent or 0,
        )

    def bytes(self, done: int, total: int | None) -> None:
        """Bytes on disk so far, of ``total`` (``None``: unknown)."""
        self._progress.update(self._id, completed=done, total=total)
