"""What the command prints, and how it ends: the progress tally, the printer of events
and summaries, exit codes and the usage error.

On a terminal, with ``rich`` installed (the ``aio88[cli]`` extra), the printer shows a
live display (see :mod:`._live`); piped, with ``--json`` or ``--quiet``, or without
``rich``, it prints plain lines.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .._models import GenerationTask, Status, Video
from .._outcome import Outcome
from . import _live

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Ctrl-C: the shell's code for SIGINT.
EXIT_INTERRUPTED = 130


@dataclass
class Tally:
    """What happened so far, for the progress line and the summary."""

    total: int = 0
    queued: int = 0
    running: int = 0
    downloading: int = 0
    """Succeeded on the server, their video not saved yet."""
    done: int = 0
    failed: int = 0
    unconfirmed: int = 0
    """Creates sent whose answer was lost: settled for this run, neither done nor failed."""
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    states: dict[str, Status] = field(default_factory=dict)
    progress: dict[str, int | None] = field(default_factory=dict)
    """Each unfinished task's percent done, as the server reports it (None: not reported)."""
    since: dict[str, float] = field(default_factory=dict)
    """When each unfinished task was first seen (``time.monotonic()``)."""

    def update(self, task: GenerationTask | Video) -> None:
        """A task changed status or progress."""
        self.progress[task.id] = task.progress
        self.since.setdefault(task.id, time.monotonic())
        previous = self.states.get(task.id)
        status = task.status
        if previous is status:
            return
        self.states[task.id] = status
        for state, delta in ((previous, -1), (status, +1)):
            if state is Status.QUEUED:
                self.queued += delta
            elif state is Status.IN_PROGRESS:
                self.running += delta
            elif state is Status.SUCCEEDED:
                self.downloading += delta

    def finish(self, outcome: Outcome) -> None:
        """A task reached its outcome: count it, and take it off the running counts."""
        if outcome.ok:
            self.done += 1
            self.bytes += size_of(outcome.path)
        else:
            self.failed += 1
        status = self.states.pop(outcome.id, None)
        self.progress.pop(outcome.id, None)
        self.since.pop(outcome.id, None)
        if status is Status.QUEUED:
            self.queued -= 1
        elif status is Status.IN_PROGRESS:
            self.running -= 1
        elif status is Status.SUCCEEDED:
            self.downloading -= 1

    def slowest(self, count: int, now: float) -> list[tuple[str, str, int | None, float]]:
        """The ``count`` tasks still queued or running on the server that look furthest
        from done at ``now``: their id, state (``queued`` or ``running``), percent done
        and when they were first seen. Furthest is the longest still to go at the pace
        each has kept so far (its percent over its age; stuck at 0 % first); tasks whose
        server reports no progress at all come after those, the oldest first (else they
        would hide every real laggard on a server that never reports it)."""
        # The live display reads this from its own thread while the event loop writes:
        # copying a dict is one C call under the GIL, iterating a live one is not.
        since, states, progress = dict(self.since), dict(self.states), dict(self.progress)

        def to_go(item: tuple[str, float]) -> tuple[int, float, float]:
            task_id, seen = item
            percent = progress.get(task_id)
            if percent is None:
                return (1, 0.0, seen)
            age = max(now - seen, 1e-3)
            return (0, -age * (100 - percent) / percent if percent else -float("inf"), seen)

        pending = (item for item in since.items() if not states.get(item[0], Status.QUEUED).done)
        return [
            (
                task_id,
                "running" if states.get(task_id) is Status.IN_PROGRESS else "queued",
                progress.get(task_id),
                seen,
            )
            for task_id, seen in heapq.nsmallest(count, pending, key=to_go)
        ]


class Show(Protocol):
    """What a one-task command tells its live line (nothing happens without one)."""

    def task(self, task: GenerationTask | Video) -> None:
        """The task's status or progress changed."""

    def bytes(self, done: int, total: int | None) -> None:
        """Bytes downloaded so far, of ``total``."""


class _NoShow:
    """The live line of plain output: none."""

    def task(self, task: GenerationTask | Video) -> None:
        pass

    def bytes(self, done: int, total: int | None) -> None:
        pass


class Printer:
    """Writes progress and results as a live display (terminal), plain lines, or JSON lines.

    Kinds of events, by how much the user asked to see: :meth:`problem` (a job failed,
    refused, unconfirmed, timed out, a file missing...) and :meth:`result` (what a
    one-task command exists to print) always; :meth:`event` (a batch's file saved) unless
    ``--quiet``; :meth:`detail` (each create, each resend) only with ``-v``. The summary
    and fatal errors always. While the live panel runs, it stands for the events: they
    scroll above it only with ``-v``.
    """

    #: Shown once on a terminal without ``rich``.
    HINT = "install aio88[cli] for the live display (pip install 'aio88[cli]')"

    def __init__(
        self,
        *,
        json_lines: bool,
        quiet: bool = False,
        verbose: int = 0,
        stream: TextIO | None = None,
        title: str = "aio88",
    ) -> None:
        self.stream = stream or sys.stdout
        self._reader_gone = False
        self.json = json_lines
        self.quiet = quiet
        self.verbose = verbose
        self.title = title
        wanted = not json_lines and not quiet and self.stream.isatty()
        self.live = wanted and _live.available()
        """Whether the live display is on (a terminal, rich installed, no --json or -q)."""
        self._hint = wanted and not self.live
        self._console: Console | None = None
        self._board: _live.Board | None = None

    @property
    def console(self) -> Console:
        """The rich console of the live display (only when :attr:`live`)."""
        if self._console is None:
            self._console = _live.make_console(self.stream)
        return self._console

    def problem(self, name: str, /, **fields: Any) -> None:
        """Something the user must know about (shown even with ``--quiet``)."""
        self._write(name, fields, "bold red")

    def result(self, name: str, /, **fields: Any) -> None:
        """The one result of a one-task command (its task, its file): always shown."""
        self._write(name, fields, "bold")

    def event(self, name: str, /, **fields: Any) -> None:
        """A result (not shown with ``--quiet``, nor under the live panel without ``-v``)."""
        if not self.quiet and (self._board is None or self.verbose):
            self._write(name, fields, "green")

    def detail(self, name: str, /, **fields: Any) -> None:
        """A step on the way (shown with ``-v`` only)."""
        if self.verbose:
            self._write(name, fields, "dim")

    def _write(self, name: str, fields: dict[str, Any], style: str) -> None:
        if self.json:
            self._json({"event": name, **fields})
            return
        words = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        if self.live:
            from rich.text import Text

            line = Text(f"{name:<10}", style=style)
            line.append(f" {words}")
            # soft_wrap: a long path stays one line to copy, wrapped by the terminal.
            self.console.print(line, soft_wrap=True)
            return
        self._out(f"{name:<10} {words}")

    def _out(self, text: str) -> None:
        """One line on stdout. A reader that left (``| head``) does not stop the command:
        a batch goes on (its results are in the ledger), its output goes nowhere."""
        if self._reader_gone:
            return
        try:
            print(text, file=self.stream, flush=True)
        except (BrokenPipeError, ValueError):  # ValueError: stdout closed under us
            self._reader_gone = True
            with contextlib.suppress(OSError, ValueError):
                # So that the interpreter's own flush at exit cannot fail either.
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            self.note("stdout was closed; carrying on without printing results")

    def note(self, message: str) -> None:
        """A line for the person at the terminal, on stderr (stdout stays for results)."""
        # Under the live panel, stderr is rich's proxy: the line prints above the panel.
        print(f"aio88: {message}", file=sys.stderr, flush=True)

    def progress(self, tally: Tally, force: bool = False) -> None:
        """Show ``tally`` live (a terminal only): the first call pins the panel, which
        then redraws on its own timer; later calls change nothing (``force`` neither, it
        stays for callers of the line this panel replaced)."""
        if self._hint:
            self._hint = False
            self.note(self.HINT)
        if self.live and self._board is None:
            self._board = _live.Board(self.console, tally, self.title)
            self._board.start()

    @contextmanager
    def activity(self, label: str, *, download: bool = False) -> Iterator[Show]:
        """A one-task command's live line while it waits: a spinner with the task's
        status and progress, or (``download``) a byte bar. Nothing in plain output."""
        if self._hint:
            self._hint = False
            self.note(self.HINT)
        if not self.live:
            yield _NoShow()
            return
        with _live.Activity(self.console, label, download=download) as show:
            yield show

    def close(self) -> None:
        """Unpin the live panel, leaving its last state on screen (done by the summary
        and by errors; call it on any other way out)."""
        board, self._board = self._board, None
        if board is not None:
            board.stop()

    def _json(self, record: dict[str, Any]) -> None:
        self._out(json.dumps(record, default=str))

    def summary(self, **fields: Any) -> None:
        """The closing summary (also in quiet mode). Numbers stay numbers in JSON; for
        people, counts get thousands separators and rates two decimals at most (a table
        on the live display)."""
        self.close()
        if self.json:
            self._json({"event": "summary", **fields})
            return
        if self.live:
            self.console.print(_live.summary_table(fields, _human))
            return
        self._out("")
        for key, value in fields.items():
            self._out(f"  {key.replace('_', ' '):<18} {_human(value)}")

    def error(self, message: str, code: int) -> int:
        """A fatal error: one line on stderr, and in JSON mode an ``error`` event on
        stdout too (a pipeline reading JSON lines sees why the command ended). Returns
        ``code``, the exit code."""
        self.close()
        print(f"aio88: error: {message}", file=sys.stderr)
        if self.json:
            self._json({"event": "error", "message": message, "exit_code": code})
        return code


def _human(value: object) -> str:
    """A summary value as people read it: 229,820 bytes; 4.09 tasks per second; - for none."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{round(value, 2):,g}"


def error_text(error: BaseException | None) -> str | None:
    """An error as one line of text (its type and message), or None for no error."""
    return None if error is None else f"{type(error).__name__}: {error}"


def outcome_event(printer: Printer, outcome: Outcome, key: str | None = None) -> None:
    """Print a task's outcome: a ``done`` event, or a ``failed`` problem (with the job's
    key, if any)."""
    report = printer.event if outcome.ok else printer.problem
    report(
        "done" if outcome.ok else "failed",
        key=key,
        id=outcome.id,
        kind=outcome.kind,
        path=outcome.path,
        error=error_text(outcome.error),
    )


def size_of(path: Path | None) -> int:
    """A file's size in bytes; 0 for no path or a file that cannot be read."""
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0
