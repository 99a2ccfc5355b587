"""Emulated tasks and their seeded lifecycle: queued, then running, then an outcome."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EmulatedTask", "Kind", "Phase", "TaskMaker"]

Kind = Literal["generation", "video"]
"""The two API families: ``/v1/video/generations`` and ``/v1/videos``."""
Phase = Literal["queued", "in_progress", "succeeded", "failed"]
"""Where a task is in its life, in the emulator's own words (each dialect renames them)."""

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class EmulatedTask:
    """A task inside the emulator. Read it; drive it with ``Emulator.complete``/``fail``."""

    id: str
    """The task id (``task_`` and 32 characters)."""
    kind: Kind
    """The family it was created on."""
    model: str
    prompt: str
    created: float
    """Emulator clock at creation."""
    queued_for: float | None
    """Seconds queued before running; ``None``: it waits for a manual ``complete``/``fail``."""
    run_for: float
    """Seconds it runs, once out of the queue."""
    will_fail: bool
    """Whether the seeded lifecycle ends it ``failed``."""
    request: dict[str, Any]
    """The create request's fields, as the emulator parsed them."""
    row_id: int
    """Its database row number, 1, 2, ... (newapi's numeric ``id``)."""
    remixed_from: str | None = None
    """The id of the video it remixes, if any."""
    forced: Literal["succeeded", "failed", "in_progress"] | None = None
    """A state set by hand (``Emulator.complete``/``fail``/``set_progress``)."""
    forced_progress: int | None = None
    """The progress held by ``Emulator.set_progress``."""
    fail_message: str = "the video vendor rejected the prompt (emulated failure)"
    """The reason a failed task gives."""
    files: dict[str, Any] = field(default_factory=dict)
    """Uploaded files of a multipart create: field name -> (filename, size, content type)."""

    def phase(self, now: float) -> tuple[Phase, int]:
        """The task's lifecycle phase (queued, in_progress, succeeded, failed) and progress."""
        # A state forced by hand wins over the seeded schedule.
        if self.forced == "succeeded":
            return "succeeded", 100
        if self.forced == "failed":
            return "failed", 100
        if self.forced == "in_progress":
            return "in_progress", self.forced_progress or 0
        if self.queued_for is None:
            return "queued", 0
        age = now - self.created
        if age < self.queued_for:
            return "queued", 0
        running = age - self.queued_for
        if running < self.run_for:
            # Never 0 (it has started) nor 100 (it has not finished) while running.
            return "in_progress", max(1, min(99, int(100 * running / self.run_for)))
        return ("failed" if self.will_fail else "succeeded"), 100

    def finished_at(self) -> float | None:
        """Emulator time at which the task ends by itself, or ``None`` if driven by hand."""
        if self.queued_for is None:
            return None
        return self.created + self.queued_for + self.run_for


class TaskMaker:
    """Makes tasks whose ids, durations and outcomes follow one seeded random stream.

    The same seed and the same sequence of calls give the same tasks, so a failing run
    can be replayed.
    """

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._row_ids = itertools.count(1)

    def new_id(self) -> str:
        """A fresh task id, ``task_`` and 32 seeded characters."""
        return "task_" + "".join(self._rng.choice(_ID_ALPHABET) for _ in range(32))

    def make(
        self,
        kind: Kind,
        model: str,
        prompt: str,
        fields: dict[str, Any],
        *,
        clock: Callable[[], float],
        duration: tuple[float, float] | None,
        failure_rate: float,
    ) -> EmulatedTask:
        """A new task created now (by ``clock``).

        Args:
            duration: ``(low, high)`` seconds from creation to the end, drawn uniformly;
                ``None`` keeps it queued until driven by hand.
            failure_rate: The chance that it ends ``failed``.
        """
        # The draws keep their order (durations, id, outcome): changing it would change
        # every seeded run.
        if duration is None:
            queued_for: float | None = None
            run_for = 0.0
        else:
            total = self._rng.uniform(*duration)
            queued_for = total * self._rng.uniform(0.05, 0.3)
            run_for = total - queued_for
        return EmulatedTask(
            id=self.new_id(),
            kind=kind,
            model=model,
            prompt=prompt,
            created=clock(),
            queued_for=queued_for,
            run_for=run_for,
            will_fail=self._rng.random() < failure_rate,
            request=fields,
            row_id=next(self._row_ids),
        )
