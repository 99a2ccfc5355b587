"""Faults: the random rates, the scripted ones, and the choice of one for each request;
and the faults of the signed callbacks the emulator sends (:class:`CallbackFaults`)."""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["CallbackFault", "CallbackFaults", "FaultKind", "FaultPicker", "Faults", "ScriptedFault"]

FaultKind = Literal["429", "500", "drop", "truncate", "garbage"]
"""What a fault does: answer 429 or 500, close without answering, cut the body, or send
a 200 whose body is not JSON."""


@dataclass
class Faults:
    """Random faults, each a probability per request to the API origin (0 = never).

    Change them while the emulator runs; scripted faults (``Emulator.inject``) come first.
    """

    rate_429: float = 0.0
    """Answer 429."""
    retry_after: float | None = None
    """The ``Retry-After`` of injected 429s, in seconds; ``None`` sends none."""
    rate_500: float = 0.0
    """Answer 500."""
    drop_rate: float = 0.0
    """Close the connection without answering."""
    truncate_rate: float = 0.0
    """Promise the whole body, send part of it, and close the connection."""
    latency: float = 0.0
    """Seconds added before each API answer. Lowered, it releases the answers waiting."""


CallbackFault = Literal["lost", "duplicated", "delayed", "reordered", "wrongly_signed"]
"""What a callback fault does to one event (see :class:`CallbackFaults`)."""


@dataclass
class CallbackFaults:
    """Random faults of the signed callbacks the emulator sends, each a probability per
    event (0 = never), drawn from their own seeded stream when the task ends.

    Change them while the emulator runs. An event may draw several (delayed and
    duplicated, say); a lost one draws nothing else.
    """

    loss_rate: float = 0.0
    """Lost: no attempt of the event is ever sent (the receiver learns nothing)."""
    duplicate_rate: float = 0.0
    """Duplicated: once delivered (or given up), the event is sent again from scratch, as
    a server that missed the first answer does."""
    delay_rate: float = 0.0
    """Delayed: the first attempt waits ``delay`` seconds more."""
    delay: float = 60.0
    """Seconds a delayed event waits (on the emulator's clock, times its
    ``callback_time_scale``)."""
    reorder_rate: float = 0.0
    """Reordered: the event is held until a later event has been sent (or ``hold``
    seconds have passed), so it arrives after one that ended later."""
    hold: float = 60.0
    """The most seconds a reordered event waits for a later one (on the emulator's clock,
    times its ``callback_time_scale``)."""
    wrong_signature_rate: float = 0.0
    """Wrongly signed: every attempt is signed with a key that is not the caller's, so a
    receiver that verifies refuses it (and the server retries, in vain)."""


@dataclass
class ScriptedFault:
    """A fault for the next ``remaining`` requests that match ``method`` and ``path``."""

    kind: FaultKind
    remaining: int
    """How many more requests it hits."""
    method: str | None
    """Only requests with this method; ``None``: any."""
    path: str | None
    """Only requests whose path starts with this; ``None``: any."""
    retry_after: float | None
    """For a 429: the ``Retry-After`` seconds to send."""


class FaultPicker:
    """Chooses the fault (if any) for each request: scripted faults first, then the rates.

    The rates draw from their own seeded stream (``seed + 1``), apart from the tasks'
    stream, so turning faults on does not change the tasks a seed makes.
    """

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed + 1)
        self._scripted: collections.deque[ScriptedFault] = collections.deque()

    def add(self, fault: ScriptedFault) -> None:
        """Queue a scripted fault behind those already queued."""
        self._scripted.append(fault)

    def pick(self, method: str, path: str, faults: Faults) -> tuple[FaultKind | None, float | None]:
        """The fault for a request and the ``Retry-After`` to send with it (for a 429).

        A scripted fault that matches is used up by one; otherwise each rate of ``faults``
        is tried in turn.
        """
        for scripted in self._scripted:
            if (scripted.method is None or scripted.method == method) and (
                scripted.path is None or path.startswith(scripted.path)
            ):
                scripted.remaining -= 1
                if scripted.remaining <= 0:
                    # Safe inside the loop: we return at once.
                    self._scripted.remove(scripted)
                return scripted.kind, scripted.retry_after
        rng = self._rng
        # A rate of 0 draws nothing, so the stream stays the same for the rates in use.
        if faults.drop_rate and rng.random() < faults.drop_rate:
            return "drop", None
        if faults.rate_429 and rng.random() < faults.rate_429:
            return "429", faults.retry_after
        if faults.rate_500 and rng.random() < faults.rate_500:
            return "500", None
        if faults.truncate_rate and rng.random() < faults.truncate_rate:
            return "truncate", None
        return None, None
