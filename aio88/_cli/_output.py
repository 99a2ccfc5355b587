"""What the command prints, and how it ends: the progress tally, the printer of events
and summaries, exit codes and the usage error."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .._models import GenerationTask, Status, Video
from .._outcome import Outcome

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Ctrl-C: the shell's code for SIGINT.
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input: reported on stderr with exit code 2, before anything is sent."""


@dataclass
class Tally:
    """What happened so far, for the progress line and the summary."""

    total: int = 0
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    unconfirmed: int = 0
    """Creates sent whose answer was lost: settled for this run, neither done nor failed."""
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    states: dict[str, Status] = field(default_factory=dict)

    def update(self, task: GenerationTask | Video) -> None:
        """A task changed status."""
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

    def finish(self, outcome: Outcome) -> None:
        """A task reached its outcome: count it, and take it off the running counts."""
        if outcome.ok:
            self.done += 1
            self.bytes += size_of(outcome.path)
        else:
            self.failed += 1
        status = self.states.pop(outcome.id, None)
        if status is Status.QUEUED:
            self.queued -= 1
        elif status is Status.IN_PROGRESS:
            self.running -= 1


class Printer:
    """Writes progress and results as a live line (terminal), plain lines, or JSON lines.

    Kinds of events, by how much the user asked to see: :meth:`problem` (a job failed,
    refused, unconfirmed, timed out, a file missing...) and :meth:`result` (what a
    one-task command exists to print) always; :meth:`event` (a batch's file saved) unless
    ``--quiet``; :meth:`detail` (each create, each resend) only with ``-v``. The summary
    and fatal errors always.
    """

    def __init__(
        self,
        *,
        json_lines: bool,
        quiet: bool = False,
        verbose: int = 0,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.json = json_lines
        self.quiet = quiet
        self.verbose = verbose
        self.live = not json_lines and not quiet and self.stream.isatty()
        self._last_draw = 0.0

    def problem(self, name: str, /, **fields: Any) -> None:
        """Something the user must know about (shown even with ``--quiet``)."""
        self._write(name, fields)

    def result(self, name: str, /, **fields: Any) -> None:
        """The one result of a one-task command (its task, its file): always shown."""
        self._write(name, fields)

    def event(self, name: str, /, **fields: Any) -> None:
        """A result (not shown with ``--quiet``)."""
        if not self.quiet:
            self._write(name, fields)

    def detail(self, name: str, /, **fields: Any) -> None:
        """A step on the way (shown with ``-v`` only)."""
        if self.verbose:
            self._write(name, fields)

    def _write(self, name: str, fields: dict[str, Any]) -> None:
        if self.json:
            self._json({"event": name, **fields})
            return
        self._clear()
        words = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        print(f"{name:<10} {words}", file=self.stream, flush=True)

    def note(self, message: str) -> None:
        """A line for the person at the terminal, on stderr (stdout stays for results)."""
        self._clear()
        print(f"aio88: {message}", file=sys.stderr, flush=True)

    def progress(self, tally: Tally, force: bool = False) -> None:
        """Redraw the live line (a terminal only), at most ten times a second."""
        now = time.monotonic()
        if not self.live or (not force and now - self._last_draw < 0.1):
            return
        self._last_draw = now
        width = 24
        finished = tally.done + tally.failed + tally.unconfirmed
        filled = width * finished // tally.total if tally.total else width
        bar = "#" * filled + "." * (width - filled)
        unconfirmed = f"  unconfirmed {tally.unconfirmed}" if tally.unconfirmed else ""
        line = (
            f"\r[{bar}] {finished}/{tally.total}  queued {tally.queued}  running {tally.running}"
            f"  done {tally.done}  failed {tally.failed}{unconfirmed}"
            f"  {tally.bytes / 1e6:.1f} MB  {now - tally.started:.0f}s"
        )
        print(line, end="", file=self.stream, flush=True)

    def _json(self, record: dict[str, Any]) -> None:
        print(json.dumps(record, default=str), file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.live:
            print("\r\x1b[2K", end="", file=self.stream)

    def summary(self, **fields: Any) -> None:
        """The closing summary (also in quiet mode). Numbers stay numbers in JSON; for
        people, counts get thousands separators and rates two decimals at most."""
        self._clear()
        if self.json:
            print(
                json.dumps({"event": "summary", **fields}, default=str),
                file=self.stream,
                flush=True,
            )
            return
        print("", file=self.stream)
        for key, value in fields.items():
            print(f"  {key.replace('_', ' '):<18} {_human(value)}", file=self.stream)
        self.stream.flush()

    def error(self, message: str, code: int) -> int:
        """A fatal error: one line on stderr, and in JSON mode an ``error`` event on
        stdout too (a pipeline reading JSON lines sees why the command ended). Returns
        ``code``, the exit code."""
        self._clear()
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
