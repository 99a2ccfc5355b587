"""Faults: the random rates, the scripted ones, and the choice of one for each request."""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["FaultKind", "FaultPicker", "Faults", "ScriptedFault"]

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
