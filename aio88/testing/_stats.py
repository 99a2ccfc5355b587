"""The emulator's running counts: what ``Emulator.stats()`` returns and
``GET /__emulator/stats`` serves."""

from __future__ import annotations

import collections
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, get_args

from ._faults import FaultKind
from ._lifecycle import Phase
from ._requests import LoggedRequest

__all__ = ["STATS_PATH", "Counters", "EmulatorStats"]

#: Where the API origin serves the counts: no key needed, never faulted, never logged.
STATS_PATH = "/__emulator/stats"

# The API's routes, by what a request to them is for (see Emulator.start).
_CREATES = {
    "video": re.compile(r"/v1/videos/?"),
    "generation": re.compile(r"/v1/video/generations/?"),
    "remix": re.compile(r"/v1/videos/[^/]+/remix"),
}
_POLL = re.compile(r"/v1/(?:videos|video/generations)/[^/]+")
_CONTENT = re.compile(r"/v1/videos/[^/]+/content")


@dataclass(frozen=True)
class EmulatorStats:
    """What an emulator has answered since it started: ``Emulator.stats()``, and, as
    JSON, ``GET /__emulator/stats`` on its API origin (``as_dict()``).

    Requests are counted once answered (or dropped); those being answered are
    ``in_flight``. ``Emulator.reset_log()`` does not reset them.
    """

    dialect: str
    """``"docs"`` or ``"newapi"``."""
    uptime: float
    """Seconds since the emulator started."""
    requests: dict[str, int]
    """Requests answered, by origin: ``api`` and ``media``."""
    creates: dict[str, int]
    """Create requests received, by family: ``video``, ``generation``, ``remix`` (whatever
    the answer: a faulted or refused create counts too)."""
    polls: int
    """Task retrievals (``GET /v1/videos/{id}``, ``GET /v1/video/generations/{id}``)."""
    content: dict[str, int]
    """Requests for a video's bytes (GET and HEAD): ``api`` at ``/v1/videos/{id}/content``,
    ``media`` at the media origin the ``newapi`` dialect redirects to."""
    faults: dict[str, int]
    """Faults injected, by kind (``429``, ``500``, ``drop``, ``truncate``, ``garbage``),
    scripted or random, on either origin."""
    rate_limited: int
    """429 answers."""
    statuses: dict[str, int]
    """API answers by status code; ``"0"``: the connection was closed without one."""
    tasks: dict[str, int]
    """Tasks by their state now: ``queued``, ``in_progress``, ``succeeded``, ``failed``."""
    in_flight: int
    """API requests being answered now."""
    max_in_flight: int
    """The most API requests answered at once (since the last ``reset_log()``)."""
    callbacks: dict[str, int] = dataclasses.field(default_factory=dict)
    """Signed callbacks: ``events`` made (tasks with a ``callback_url`` that ended),
    ``attempts`` POSTed, ``delivered`` (sendings answered 2xx: a duplicated event's two
    count twice), ``failed_attempts``, ``gave_up`` (sendings dropped after 8 attempts),
    ``skipped`` (events for a URL off loopback, never sent), ``held`` now (reordered,
    waiting for a later event), and the faults drawn: ``lost``, ``duplicated``, ``delayed``,
    ``reordered``, ``wrongly_signed``."""

    def as_dict(self) -> dict[str, Any]:
        """The counts as plain JSON-ready data (what the stats route serves)."""
        return dataclasses.asdict(self)


class Counters:
    """Counts answered requests as the emulator's middleware reports them."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.creates: collections.Counter[str] = collections.Counter()
        self.polls = 0
        self.content: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()

    def record(self, entry: LoggedRequest) -> None:
        """Count one answered request (a media body cut because of a fault on its
        ``/content`` redirect carries no fault of its own: it is that one, counted once)."""
        self.requests[entry.origin] += 1
        if entry.fault is not None:
            self.faults[entry.fault] += 1
        if entry.origin == "media":
            self.content["media"] += 1
            return
        self.statuses[entry.status] += 1
        path = entry.path
        if entry.method == "POST":
            for family, pattern in _CREATES.items():
                if pattern.fullmatch(path):
                    self.creates[family] += 1
        elif _CONTENT.fullmatch(path):
            self.content["api"] += 1
        elif _POLL.fullmatch(path):
            self.polls += 1

    def snapshot(
        self,
        *,
        dialect: str,
        uptime: float,
        phases: list[Phase],
        in_flight: int,
        max_in_flight: int,
        callbacks: dict[str, int] | None = None,
    ) -> EmulatorStats:
        """The counts now, with every key present (zero when nothing happened)."""

        def every(keys: tuple[str, ...], counts: collections.Counter[str]) -> dict[str, int]:
            return {key: counts[key] for key in keys}

        return EmulatorStats(
            dialect=dialect,
            uptime=round(uptime, 3),
            requests=every(("api", "media"), self.requests),
            creates=every(tuple(_CREATES), self.creates),
            polls=self.polls,
            content=every(("api", "media"), self.content),
            faults=every(get_args(FaultKind), self.faults),
            rate_limited=self.statuses[429],
            statuses={str(code): n for code, n in sorted(self.statuses.items())},
            tasks=every(get_args(Phase), collections.Counter(phases)),
            in_flight=in_flight,
            max_in_flight=max_in_flight,
            callbacks=dict(callbacks or {}),
        )
