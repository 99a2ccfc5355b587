"""Signed task callbacks: verifying what 88API's server POSTs to a task's ``callback_url``.

The server (its new-api fork, ``reference/88api-api.md`` §4.8) signs each event with
``X-NewAPI-Signature: sha256=<hex>``: HMAC-SHA256 keyed with ``"sk-" + <api key>`` over
``"<X-NewAPI-Timestamp>.<raw body>"``, the key normalised as the server does. It keeps no
timestamp window and retries for about 21 minutes, so the receiver checks the age itself.

A verified event is a hint, not the truth: it says which task finished; the task itself
is fetched by a poll. Nothing here sends a request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping

import msgspec

from ._errors import WebhookVerificationError
from ._models import Status, normalize_status, parse_progress

__all__ = ["CallbackEvent", "Webhooks", "normalize_key", "unwrap"]

#: The only signature form the server makes: anything else is refused, not guessed at.
_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})")
#: The events the server sends.
EVENT_TYPES = frozenset({"video.completed", "video.failed"})


class CallbackEvent(msgspec.Struct, frozen=True):
    """A verified callback: which task finished, and how, as the event tells it."""

    id: str
    """The delivery's id, ``evt_<task_id>_<completed|failed>`` (the same for retries)."""
    type: str
    """``video.completed`` or ``video.failed``."""
    created_at: int
    """When the server made the event (Unix seconds)."""
    task_id: str
    """The task it is about."""
    status: Status
    """The task's status, normalised."""
    raw_status: str | None
    """The status as the event spelt it (``completed``...)."""
    progress: int | None
    """0-100, when the event said."""
    url: str | None
    """The video's link (the event's ``output_url``)."""
    error: str | None
    """Why the task failed, when it did."""
    model: str | None
    """The model the task ran on."""


class _Data(msgspec.Struct):
    task_id: str
    status: str | None = None
    progress: str | int | float | None = None
    output_url: str | None = None
    error: str | dict[str, object] | None = None
    model: str | None = None


class _Event(msgspec.Struct):
    id: str
    type: str
    created_at: int
    data: _Data


_decode_event = msgspec.json.Decoder(_Event).decode


def normalize_key(api_key: str) -> str:
    """An API key as the server keys its signatures: without ``Bearer `` and ``sk-``, and
    only the part before the first ``-`` (the rest names a channel)."""
    key = api_key.strip()
    if key[:7].lower() == "bearer ":
        key = key[7:].strip()
    key = key.removeprefix("sk-")
    return key.split("-", 1)[0]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header, whatever the case of its name (a plain dict from a framework too)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, found in headers.items():
            if key.lower() == lowered:
                return found
    return value


def unwrap(
    body: bytes,
    headers: Mapping[str, str],
    *,
    keys: Iterable[str],
    tolerance: float | None = 300,
    now: float | None = None,
) -> CallbackEvent:
    """Verify a callback and return its event.

    Args:
        body: The request's raw body, as received (not re-encoded).
        headers: The request's headers (names in any case).
        keys: The API keys that may have made the task, as users hold them (``sk-...``);
            several during a key rotation.
        tolerance: The most seconds the timestamp may be old or ahead; ``None``: no check.
        now: The time to check against (Unix seconds); the clock's by default.

    Raises:
        WebhookVerificationError: No or a malformed signature, none of ``keys`` signed it,
            a timestamp outside ``tolerance``, headers that disagree with the signed body,
            or a body that is not an event. The message never holds a key or the body.
    """
    signature = _header(headers, "X-NewAPI-Signature")
    stamp = _header(headers, "X-NewAPI-Timestamp")
    if signature is None or stamp is None:
        raise WebhookVerificationError(
            "not a signed callback: X-NewAPI-Signature or X-NewAPI-Timestamp is missing"
        )
    match = _SIGNATURE.fullmatch(signature.strip())
    if match is None:
        raise WebhookVerificationError(
            "malformed X-NewAPI-Signature: expected sha256= and 64 lowercase hex digits"
        )
    if not stamp.strip().isascii() or not stamp.strip().isdigit():
        raise WebhookVerificationError("malformed X-NewAPI-Timestamp: expected Unix seconds")
    given = bytes.fromhex(match.group(1))
    signed = stamp.strip().encode() + b"." + body
    secrets = [("sk-" + normalize_key(key)).encode() for key in keys if key and key.strip()]
    if not secrets:
        raise WebhookVerificationError("no API key to verify the callback with")
    # Each key is compared in constant time, and every key is tried: the time taken says
    # nothing about which one (or how much of one) matched.
    valid = False
    for secret in secrets:
        expected = hmac.new(secret, signed, hashlib.sha256).digest()
        valid |= hmac.compare_digest(expected, given)
    if not valid:
        raise WebhookVerificationError("the callback's signature does not match the API key")
    if tolerance is not None:
        age = (time.time() if now is None else now) - int(stamp)
        if abs(age) > tolerance:
            when = "old" if age > 0 else "ahead"
            raise WebhookVerificationError(
                f"the callback's timestamp is {abs(age):.0f} s {when} (tolerance "
                f"{tolerance:g} s): a replay, or a clock far off"
            )
    try:
        event = _decode_event(body)
    except msgspec.DecodeError as exc:
        # msgspec's message names a path in the body, never its values.
        raise WebhookVerificationError(
            f"the callback's body is not an event ({exc})", malformed=True
        ) from None
    if event.type not in EVENT_TYPES:
        raise WebhookVerificationError(
            f"unknown callback event type {event.type!r}", malformed=True
        )
    for name, value in (("X-NewAPI-Event", event.type), ("X-NewAPI-Delivery", event.id)):
        sent = _header(headers, name)
        if sent is not None and sent.strip() != value:
            raise WebhookVerificationError(f"{name} disagrees with the signed body", malformed=True)
    data = event.data
    error = data.error
    if isinstance(error, dict):
        message = error.get("message")
        error = message if isinstance(message, str) else None
    return CallbackEvent(
        id=event.id,
        type=event.type,
        created_at=event.created_at,
        task_id=data.task_id,
        status=normalize_status(data.status),
        raw_status=data.status,
        progress=parse_progress(data.progress),
        url=data.output_url,
        error=error or None,
        model=data.model,
    )


class Webhooks:
    """``client.webhooks``: verifying the callbacks of the tasks this client creates.

    In any web framework, with the request's raw body and headers::

        try:
            event = client.webhooks.unwrap(await request.body(), request.headers)
        except aio88.WebhookVerificationError:
            return Response(status_code=401)
    """

    __slots__ = ("_api_key",)

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def unwrap(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        keys: Iterable[str] | None = None,
        tolerance: float | None = 300,
    ) -> CallbackEvent:
        """Verify a callback (signed with the client's key, or one of ``keys``) and return
        its event. See :func:`aio88._webhooks.unwrap` for what is checked.

        Args:
            body: The raw request body.
            headers: The request headers.
            keys: API keys that may have made the task (a rotation); the client's own by
                default.
            tolerance: The most seconds the timestamp may be old or ahead; ``None``: none.

        Raises:
            WebhookVerificationError: The callback does not verify.
        """
        return unwrap(
            body,
            headers,
            keys=[self._api_key] if keys is None else keys,
            tolerance=tolerance,
        )

    def __repr__(self) -> str:
        return "<aio88.Webhooks>"  # never the key
