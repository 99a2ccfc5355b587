"""What a client shares with other processes, as protocols: where each request takes its
turn (:class:`RateBudget`), who polls which task and how everyone else learns of its end
(:class:`TaskLeases`), and what gives both (:class:`Coordinator`, e.g.
``aio88.fleet.Fleet``).

A leaf: the transport and the poller are written against these, and ``import aio88``
never imports a database driver. The in-process budget is :class:`~aio88._pacing.LocalRateBudget`;
without a coordinator a poller polls every task it tracks itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ._models import Kind

__all__ = ["Coordinator", "FinishedHandler", "HintHandler", "RateBudget", "TaskLeases"]


class RateBudget(Protocol):
    """Paces every request a client sends, and slows it after a 429.

    All times are in the clock the budget was made with (the transport's).
    """

    @property
    def recovering(self) -> bool:
        """Whether a 429 lowered the rate and it has not grown back yet."""
        ...

    async def wait_turn(self) -> None:
        """Return when one more request may be sent: a token is free and no 429's pause
        is in force (also one that began while this call slept)."""
        ...

    def rate_limited(self, now: float, pause: float, sent_at: float) -> bool:
        """A 429 came for a request sent at ``sent_at``: pause every request for
        ``pause`` seconds and halve the rate, once per window (a 429 for a request sent
        before the last one was acted on only extends the pause). Returns whether it
        counted as a new signal. Must not block: a shared budget tells the others in the
        background."""
        ...

    def succeeded(self, now: float) -> None:
        """A request went through: give back a little of what a 429 took."""
        ...


#: ``on_finished(task_id, kind, task_json)``: another process saw the task end.
FinishedHandler = Callable[[str, Kind, bytes], object]
#: ``on_hint(task_id)``: a callback for the task reached some process: poll it now.
HintHandler = Callable[[str], object]


class TaskLeases(Protocol):
    """Which live process polls each task, and how the others hear of its end.

    The poller calls the synchronous methods from its hot path: they never block and do
    no I/O; the implementation does its database work in the background.
    """

    @property
    def lease(self) -> float:
        """How long a lease lasts unless renewed, in seconds."""
        ...

    def subscribe(self, on_finished: FinishedHandler, on_hint: HintHandler) -> Callable[[], None]:
        """Have ``on_finished`` called when any process writes a tracked task's end, and
        ``on_hint`` when any process receives a callback for one. Returns the function
        that unsubscribes (the poller calls it when it closes)."""
        ...

    def track(self, task_id: str, kind: Kind) -> None:
        """This process waits on ``task_id``: claim it when nobody holds it (now, in the
        background), and report its end if another process writes it. If the task ended
        before (its row says so), ``on_finished`` is called for it soon."""
        ...

    def untrack(self, task_id: str) -> None:
        """Nobody here waits on ``task_id`` any more: release its lease if held."""
        ...

    def holds(self, task_id: str) -> bool:
        """Whether this process holds ``task_id``'s lease now (no I/O: what the last
        claim or renewal said, and not past its expiry)."""
        ...

    async def claim(self, task_id: str, kind: Kind) -> bool:
        """Try to take ``task_id``'s lease now (one round trip); whether it is held."""
        ...

    def finished(self, task_id: str, kind: Kind, task_json: bytes) -> None:
        """This process saw ``task_id`` end (succeeded or failed; ``task_json`` is the
        task as msgspec encodes it): record it, only while the lease is held, and wake
        every other process's waiters. Never blocks."""
        ...

    def hint(self, task_id: str) -> None:
        """A verified callback for ``task_id`` arrived here: have its lease holder,
        wherever it is, poll it now. Never blocks."""
        ...


@runtime_checkable
class Coordinator(Protocol):
    """What ``Client(fleet=...)`` takes: a shared rate budget and task leases."""

    def rate_budget(self, name: str, rate: float | None, clock: Callable[[], float]) -> RateBudget:
        """The budget every process's requests under ``name`` share: ``rate`` per second
        fleet-wide plus one burst of ``rate``; ``None``: only the shared 429 pause.

        ``name`` tells budgets apart (one per API key and origin); it is a digest, never
        the key. ``clock`` is the transport's (the times it passes the budget)."""
        ...

    @property
    def leases(self) -> TaskLeases:
        """Which process polls which task."""
        ...

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts without renewal: how soon a dead process's tasks are
        taken over."""
        ...
