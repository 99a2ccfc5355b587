"""Signed task callbacks, sent as 88API's server sends them (its new-api fork,
``reference/88api-api.md`` §4.8): when a task created with a ``callback_url`` ends, a
``POST`` of a signed event to that URL, retried on failure; with the faults of
:class:`CallbackFaults`.

The signing is written here again from the server's description, never taken from the
client: a client that verifies these callbacks checks its own code against an independent
implementation, not against itself.

Unlike the real server, which refuses loopback and private addresses (its SSRF filter),
the emulator calls *only* loopback URLs (``127.0.0.0/8``, ``::1``, ``localhost``): a test
can never make it contact another host. Any other valid URL is accepted at create, as the
server accepts it (code under test may pass its production URL), and its event is logged
as skipped, never sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, get_args
from urllib.parse import urlsplit

import aiohttp

from ._faults import CallbackFault, CallbackFaults
from ._lifecycle import EmulatedTask, Phase

log = logging.getLogger("aio88.testing")

__all__ = [
    "ATTEMPTS",
    "CallbackDelivery",
    "CallbackSender",
    "InvalidCallbackURL",
    "check_callback_url",
    "encode_event",
    "is_loopback",
    "retry_delay",
    "sign",
]

#: The longest ``callback_url`` the server accepts.
URL_MAX = 2048
#: Attempts per event before the server gives up (dead-letters it).
ATTEMPTS = 8
#: The first retry's delay, in seconds; each later one doubles it...
RETRY_FIRST = 10.0
#: ...up to this cap (never reached within 8 attempts: 640 s is the last delay).
RETRY_CAP = 15 * 60.0
#: The server's timeout for one POST, in real seconds (never scaled: a loopback receiver
#: answers well within it, and a scaled one would fail slow but healthy receivers).
REQUEST_TIMEOUT = 15.0
USER_AGENT = "NewAPI-Task-Callback/1.0"
#: What a wrongly signed event is signed with: no user's key.
WRONG_KEY = "sk-emulatorwrongkey"

#: The stats' callback counts, every key always present.
COUNTS = ("events", "attempts", "delivered", "failed_attempts", "gave_up", "skipped", "held")
#: The error of an event for a URL off loopback, logged instead of sending it.
OFF_LOOPBACK = "not sent: the emulator calls loopback URLs only"


class InvalidCallbackURL(ValueError):
    """A ``callback_url`` the emulator refuses (400 ``invalid_callback_url``)."""


def check_callback_url(value: object) -> str | None:
    """The URL to call back, ``None`` for none (absent or empty, as the server reads it).

    Any host is accepted here, as the server accepts it; only a loopback one is ever
    called (:func:`is_loopback`).

    Raises:
        InvalidCallbackURL: Not a string, longer than 2,048 characters, or not an
            ``http(s)`` URL with a host.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidCallbackURL("callback_url must be a string")
    if len(value) > URL_MAX:
        raise InvalidCallbackURL(f"callback_url is longer than {URL_MAX} characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - parsing the port is the check (a bad one raises)
    except ValueError:
        raise InvalidCallbackURL("callback_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidCallbackURL("callback_url must be an http or https URL")
    return value


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is loopback (``127.0.0.0/8``, ``::1``, ``localhost``): the
    only URLs the emulator calls."""
    host = urlsplit(url).hostname or ""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it could resolve anywhere
        return False


def _signing_key(api_key: str) -> bytes:
    """The HMAC key the server signs with: ``"sk-"`` and the key as it stores it (no
    ``Bearer ``, no ``sk-``, only the part before the first ``-``, which names a channel)."""
    key = api_key.strip()
    if key[:7].lower() == "bearer ":
        key = key[7:].strip()
    key = key.removeprefix("sk-").split("-", 1)[0]
    return ("sk-" + key).encode()


def sign(api_key: str, timestamp: int, body: bytes) -> str:
    """The ``X-NewAPI-Signature`` of a callback: ``sha256=`` and the lowercase hex of
    HMAC-SHA256 over ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(_signing_key(api_key), message, hashlib.sha256).hexdigest()


# Go's encoding/json escapes these inside strings (HTML safety); the server's bodies carry
# them so, and a receiver must verify the bytes it got, never a re-encoding.
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028"}
_GO_ESCAPES["\u2029"] = "\\u2029"


def encode_event(event: dict[str, Any]) -> bytes:
    """An event's body as Go's ``json.Marshal`` writes it: compact, fields in order, UTF-8,
    ``<``, ``>`` and ``&`` escaped (they occur only inside strings, so a plain replace is
    exact)."""
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _GO_ESCAPES.items():
        text = text.replace(raw, escaped)
    return text.encode()


def event_body(
    *,
    task_id: str,
    model: str,
    phase: Phase,
    output_url: str | None,
    error: str | None,
    created_at: int,
    completed_at: int,
    now: int,
) -> dict[str, Any]:
    """The event the server sends for a task that ended (``output_url`` and ``error`` are
    left out when empty, as the server's ``omitempty`` does)."""
    outcome = "completed" if phase == "succeeded" else "failed"
    data: dict[str, Any] = {
        "task_id": task_id,
        "model": model,
        "status": outcome,
        "progress": "100%",
    }
    if output_url:
        data["output_url"] = output_url
    if error:
        data["error"] = error
    data["created_at"] = created_at
    data["completed_at"] = completed_at
    return {
        "id": f"evt_{task_id}_{outcome}",
        "type": f"video.{outcome}",
        "created_at": now,
        "data": data,
    }


def retry_delay(attempt: int) -> float:
    """Seconds from the ``attempt``-th failed attempt (1, 2, ...) to the next: 10, 20, 40,
    ... capped at 15 minutes."""
    return float(min(RETRY_FIRST * 2 ** (attempt - 1), RETRY_CAP))


@dataclass
class CallbackDelivery:
    """One POST of a callback (an attempt), or an event lost by a fault (never sent)."""

    event_id: str
    """The event's id, ``evt_<task_id>_<completed|failed>`` (its ``X-NewAPI-Delivery``)."""
    event: str
    """``video.completed`` or ``video.failed``."""
    task_id: str
    url: str
    """Where it was sent (the task's ``callback_url``)."""
    attempt: int
    """1 to 8 (``ATTEMPTS``); 0 for an event never sent: lost by a fault, or skipped (its
    URL is not loopback)."""
    copy: int
    """1; 2 for the second sending of a duplicated event."""
    at: float
    """Real monotonic time it was sent (``time.monotonic()``)."""
    clock: float
    """The emulator's clock when it was sent."""
    body: bytes
    """The raw body, exactly as sent (signed)."""
    headers: dict[str, str] = field(default_factory=dict)
    """The headers it was sent with (none for a lost event)."""
    faults: tuple[CallbackFault, ...] = ()
    """The faults its event drew."""
    status: int | None = None
    """The receiver's answer; 0 when none came (refused, reset, timed out); ``None`` while
    in flight, and for a lost event."""
    error: str | None = None
    """Why no answer came, when none did (for a skipped event: that it was not sent)."""
    elapsed: float | None = None
    """Seconds from sending to the answer."""

    @property
    def sent(self) -> bool:
        """Whether it was sent at all (a lost or skipped event was not)."""
        return self.attempt > 0

    @property
    def delivered(self) -> bool:
        """Whether the receiver answered 2xx (the server's test of success)."""
        return self.status is not None and 200 <= self.status < 300


async def sleep_until(clock: Callable[[], float], deadline: float) -> None:
    """Wait until ``clock`` reads ``deadline``: on a manual clock, until a test advances
    it; on any other, in real time."""
    sleeper: Callable[[float], Awaitable[None]] | None = getattr(clock, "sleep_until", None)
    if sleeper is not None:
        await sleeper(deadline)
        return
    # In a loop: the loop's timers may fire a tick early.
    while (left := deadline - clock()) > 0:  # noqa: ASYNC110 - a clock to read, no event
        await asyncio.sleep(left)


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Return when the first of ``waits`` does; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Awaited, so none is left pending when the emulator's loop closes.
        await asyncio.gather(*tasks, return_exceptions=True)


class CallbackSender:
    """Follows the tasks created with a ``callback_url`` and sends each one's event when
    it ends, with retries and faults; owned by the emulator, which closes it.

    A task's end is found on the emulator's clock: its follower sleeps until the task's
    own end, and is woken early by :meth:`poke` (``complete``/``fail``/``set_progress``),
    so a manual clock works as a real one does.

    Args:
        clock: The emulator's clock.
        api_key: The emulator's key, read at each attempt (the one the events are signed
            with).
        faults: The emulator's callback faults, read when each event is made.
        make_event: The event for a task that ended in ``phase``, as a dict.
        seed: Seeds the fault draws (a stream of their own).
        time_scale: Multiplies every wait (retries, delays, holds): ``0.01`` turns the
            first retry's 10 s into 0.1 s.
        on_delivery: Called with each :class:`CallbackDelivery` once it is answered (or
            lost).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        api_key: Callable[[], str],
        faults: Callable[[], CallbackFaults],
        make_event: Callable[[EmulatedTask, Phase], dict[str, Any]],
        seed: int,
        time_scale: float,
        on_delivery: Callable[[CallbackDelivery], None] | None = None,
    ) -> None:
        self._clock = clock
        self._api_key = api_key
        self._faults = faults
        self._make_event = make_event
        # A stream apart from the tasks' (seed) and the request faults' (seed + 1): turning
        # callback faults on changes neither.
        self._rng = random.Random(seed + 2)
        self.time_scale = time_scale
        self.on_delivery = on_delivery
        self.deliveries: list[CallbackDelivery] = []
        """Every attempt sent and every event lost, in order."""
        self._counts: dict[str, int] = dict.fromkeys(COUNTS + get_args(CallbackFault), 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._poked: asyncio.Event | None = None
        self._held: list[asyncio.Event] = []
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # -- the emulator's side -------------------------------------------------------------

    def follow(self, task: EmulatedTask, url: str) -> None:
        """Send ``task``'s event to ``url`` when it ends."""
        if self._closed:
            return
        follower = asyncio.get_running_loop().create_task(self._follow(task, url))
        self._tasks.add(follower)
        follower.add_done_callback(self._tasks.discard)

    def poke(self) -> None:
        """A task was driven by hand: every follower looks at its task again."""
        poked, self._poked = self._poked, None
        if poked is not None:
            poked.set()

    def counts(self) -> dict[str, int]:
        """Events made, attempts sent, delivered, failed attempts, given up, held now, and
        the faults drawn (``lost``, ``duplicated``...)."""
        return {**self._counts, "held": len(self._held)}

    async def aclose(self) -> None:
        """Cancel every follower and delivery, and close the connections. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- one event's life ----------------------------------------------------------------

    async def _follow(self, task: EmulatedTask, url: str) -> None:
        try:
            phase = await self._until_end(task)
            await self._send_event(self._make_event(task, phase), url)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A broken delivery must not break the emulator: said, and left.
            log.exception("the emulator's callback for %s failed", task.id)

    async def _until_end(self, task: EmulatedTask) -> Phase:
        while True:
            phase, _ = task.phase(self._clock())
            if phase in ("succeeded", "failed"):
                return phase
            if self._poked is None:
                self._poked = asyncio.Event()
            poked = self._poked
            # A state set by hand holds the task until set again: only a poke changes it.
            end = task.finished_at() if task.forced is None else None
            if end is None:
                await poked.wait()
            else:
                await _first(poked.wait(), sleep_until(self._clock, end))

    def _draw(self) -> tuple[CallbackFault, ...]:
        faults = self._faults()
        rng = self._rng
        # A rate of 0 draws nothing, so the stream stays the same for the rates in use.
        if faults.loss_rate and rng.random() < faults.loss_rate:
            return ("lost",)
        drawn: list[CallbackFault] = []
        for name, rate in (
            ("duplicated", faults.duplicate_rate),
            ("delayed", faults.delay_rate),
            ("reordered", faults.reorder_rate),
            ("wrongly_signed", faults.wrong_signature_rate),
        ):
            if rate and rng.random() < rate:
                drawn.append(name)  # type: ignore[arg-type]  # the literal's own names
        return tuple(drawn)

    async def _send_event(self, event: dict[str, Any], url: str) -> None:
        body = encode_event(event)
        self._counts["events"] += 1
        if not is_loopback(url):
            self._counts["skipped"] += 1
            self._record(self._unsent(event, body, url, (), OFF_LOOPBACK))
            return
        drawn = self._draw()
        for fault in drawn:
            self._counts[fault] += 1
        if "lost" in drawn:
            self._record(self._unsent(event, body, url, drawn, None))
            return
        settings = self._faults()
        if "delayed" in drawn:
            await self._sleep(settings.delay)
        if "reordered" in drawn:
            released = asyncio.Event()
            self._held.append(released)
            try:
                await _first(released.wait(), self._sleep(settings.hold))
            finally:
                self._held.remove(released)
        for copy in (1, 2) if "duplicated" in drawn else (1,):
            await self._attempts(event, body, url, drawn, copy)

    async def _attempts(
        self,
        event: dict[str, Any],
        body: bytes,
        url: str,
        drawn: tuple[CallbackFault, ...],
        copy: int,
    ) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            delivery = await self._post(event, body, url, drawn, copy, attempt)
            if attempt == 1 and copy == 1 and "reordered" not in drawn:
                # A later event has gone out: what was held back may follow it now.
                for held in self._held:
                    held.set()
            if delivery.delivered:
                self._counts["delivered"] += 1
                return
            self._counts["failed_attempts"] += 1
            if attempt < ATTEMPTS:
                await self._sleep(retry_delay(attempt))
        self._counts["gave_up"] += 1
        log.info("the emulator gave up on callback %s after %d attempts", event["id"], ATTEMPTS)

    async def _post(
        self,
        event: dict[str, Any],
        body: bytes,
        url: str,
        drawn: tuple[CallbackFault, ...],
        copy: int,
        attempt: int,
    ) -> CallbackDelivery:
        # Regenerated per attempt, and real time (what the receiver's clock is compared
        # with), even under a manual clock.
        stamp = int(time.time())
        key = WRONG_KEY if "wrongly_signed" in drawn else self._api_key()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-NewAPI-Event": event["type"],
            "X-NewAPI-Delivery": event["id"],
            "X-NewAPI-Timestamp": str(stamp),
            "X-NewAPI-Signature": sign(key, stamp, body),
        }
        delivery = CallbackDelivery(
            event_id=event["id"],
            event=event["type"],
            task_id=event["data"]["task_id"],
            url=url,
            attempt=attempt,
            copy=copy,
            at=time.monotonic(),
            clock=self._clock(),
            body=body,
            headers=headers,
            faults=drawn,
        )
        self.deliveries.append(delivery)
        self._counts["attempts"] += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                trust_env=False,  # never through a proxy from the environment
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        try:
            # No redirect is followed (it could lead off loopback); a 3xx is a failure.
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                delivery.status = response.status
                await response.read()  # ignored, as the server ignores it
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            delivery.status = 0
            delivery.error = str(exc) or type(exc).__name__
        delivery.elapsed = time.monotonic() - delivery.at
        self._notify(delivery)
        return delivery

    def _unsent(
        self,
        event: dict[str, Any],
        body: bytes,
        url: str,
        drawn: tuple[CallbackFault, ...],
        error: str | None,
    ) -> CallbackDelivery:
        """The log entry of an event that is not sent at all."""
        return CallbackDelivery(
            event_id=event["id"],
            event=event["type"],
            task_id=event["data"]["task_id"],
            url=url,
            attempt=0,
            copy=1,
            at=time.monotonic(),
            clock=self._clock(),
            body=body,
            faults=drawn,
            error=error,
        )

    def _record(self, delivery: CallbackDelivery) -> None:
        self.deliveries.append(delivery)
        self._notify(delivery)

    def _notify(self, delivery: CallbackDelivery) -> None:
        if self.on_delivery is None:
            return
        try:
            self.on_delivery(delivery)
        except Exception:
            log.exception("Emulator(on_callback=...) failed; it is not called any more")
            self.on_delivery = None

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of the server's time: on the emulator's clock, scaled."""
        await sleep_until(self._clock, self._clock() + seconds * self.time_scale)
