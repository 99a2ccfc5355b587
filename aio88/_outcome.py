"""What a poller reports: how each task ended (:class:`Outcome`), and what it is doing
(:class:`PollerStats`). Plain values: this module is a leaf."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._models import Kind, Status, Task

__all__ = ["Outcome", "PollerStats"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one task ended, as ``client.watch`` yields it.

    Attributes:
        id: The task id.
        kind: ``"generation"`` or ``"video"``.
        task: The task as last retrieved (``None`` if it never was).
        error: Why it did not succeed: a :class:`TaskFailedError`, a
            :class:`WaitTimeoutError`, a :class:`NotFoundError`, a download error, a
            ``ValueError`` for an id that cannot be polled... ``None`` on success.
        path: Where the video was saved, when the watch downloads.
    """

    id: str
    kind: Kind
    task: Task | None = None
    error: BaseException | None = None
    path: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether the task succeeded (and, when downloading, its file is saved)."""
        return self.error is None and self.task is not None and self.task.status is Status.SUCCEEDED


@dataclass(frozen=True, slots=True)
class PollerStats:
    """A snapshot of a poller's work.

    Attributes:
        tracked: Tasks being polled now.
        in_flight: Poll requests under way now.
        polls: Poll requests made (retries inside the client not counted).
        finished: Tasks that reached an outcome.
        errors: Polls that failed transiently and were rescheduled.
        rate_limited: 429 answers the client has seen.
        concurrency: The concurrency in force now (lowered after a 429, then regrown).
    """

    tracked: int
    in_flight: int
    polls: int
    finished: int
    errors: int
    rate_limited: int
    concurrency: int
