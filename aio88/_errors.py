"""The exceptions aio88 raises, in one tree.

::

    Aio88Error
    ├── APIError                          .message, .request_id
    │   ├── APIStatusError                .status_code, .code, .type, .param, .body
    │   │   ├── BadRequestError 400       ├── ConflictError 409
    │   │   ├── AuthenticationError 401   ├── UnprocessableEntityError 422
    │   │   ├── PermissionDeniedError 403 ├── RateLimitError 429   (.retry_after)
    │   │   ├── NotFoundError 404 (also 400 task_not_exist)
    │   │   └── InternalServerError 5xx
    │   ├── APIConnectionError
    │   │   └── APITimeoutError
    │   └── APIResponseValidationError
    ├── TaskFailedError                   .task (the failed task, with its error)
    ├── WaitTimeoutError                  .task (last seen)   — also a TimeoutError
    └── DownloadError                     size/checksum mismatch, non-video body

Catch :class:`APIStatusError` for "the server said no", :class:`APIConnectionError` for
"the server could not be reached or did not answer", and :class:`Aio88Error` for anything
this package raises. Bad arguments (an empty prompt, an id with a ``/``) raise the
built-in :class:`ValueError` or :class:`TypeError` before any request is sent.

This module is a leaf: it imports only :mod:`aio88._models` (the task types).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import msgspec

from ._models import Task

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "Aio88Error",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "DownloadError",
    "FleetError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateBudgetUnavailableError",
    "RateLimitError",
    "TaskFailedError",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "make_status_error",
    "request_id_from",
    "wrong_task_error",
]

#: How much of an unexpected body an exception message quotes.
BODY_EXCERPT_CHARS = 200

#: The codes with which 88API's task layer answers an unknown task id, with HTTP 400.
TASK_NOT_FOUND_CODES = frozenset({"task_not_exist", "task_origin_not_exist"})


class Aio88Error(Exception):
    """Base class of every exception aio88 raises."""


class APIError(Aio88Error):
    """A request to the API did not produce a usable answer.

    Attributes:
        message: What went wrong, in words (the server's message when it sent one).
        request_id: The server's request id (``X-Oneapi-Request-Id`` or ``x-request-id``),
            to quote to 88API support; ``None`` when the server sent none.
    """

    message: str
    request_id: str | None

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id and self.request_id not in self.message:
            return f"{self.message} (request id: {self.request_id})"
        return self.message


class APIStatusError(APIError):
    """The server answered with an HTTP error status (4xx or 5xx).

    Attributes:
        status_code: The HTTP status.
        code: The error code from the body (``"task_not_exist"``, ``"new_api_error"``, ...),
            or ``None``.
        type: The error type from the body (``"invalid_request_error"``, ...), or ``None``.
        param: The parameter the server blamed, or ``None``.
        body: The decoded JSON body, the raw text when it was not JSON, or ``None`` when empty.
        headers: The response headers.
        media_host: The server that answered when it is not the API but a media server (a
            CDN or storage a task's link or a redirect led to); ``None`` when the API
            answered. A 403 from a media server is an expired or refused link, not a key.
    """

    status_code: int
    code: str | None
    type: str | None
    param: str | None
    body: object
    headers: Mapping[str, str]

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        media_host: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.media_host = media_host
        self.status_code = status_code
        self.code = code
        self.type = type
        self.param = param
        self.body = body
        self.headers = headers if headers is not None else {}


class BadRequestError(APIStatusError):
    """HTTP 400: the request was malformed or a parameter was rejected."""


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing, wrong, expired or out of quota."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the key may not do this (banned, IP-restricted, insufficient quota)."""


class NotFoundError(APIStatusError):
    """HTTP 404, or 88API's HTTP 400 ``task_not_exist``: no such task for this key."""


class ConflictError(APIStatusError):
    """HTTP 409: the request conflicts with the resource's state."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422: the request was well-formed but could not be processed."""


class RateLimitError(APIStatusError):
    """HTTP 429: too many requests.

    Attributes:
        retry_after: Seconds the server asked us to wait, or ``None`` when it did not say.
    """

    retry_after: float | None

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class InternalServerError(APIStatusError):
    """HTTP 5xx: the gateway or the video vendor behind it failed."""


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke before a full answer.

    Attributes:
        request_sent: ``False`` only when no byte of the request was written to a
            connection, so the server provably did not process it. For a create through
            the client's own sessions this is what aiohttp's request tracing saw (exact:
            a timeout while connecting says ``False``); otherwise it is inferred from the
            kind of failure.
    """

    request_sent: bool

    def __init__(
        self,
        message: str = "Connection error.",
        *,
        request_id: str | None = None,
        request_sent: bool = True,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError):
    """The request did not complete within the configured timeout."""


class RateBudgetUnavailableError(APIConnectionError):
    """A shared rate budget (a fleet's, kept in its database) could not hand out a token:
    the request was not sent (``request_sent`` is ``False``)."""


class FleetError(Aio88Error):
    """The fleet's database cannot be reached or used (its message names the host and
    port, never a password), or the fleet is used before :meth:`Fleet.start`.

    Defined here, not in :mod:`aio88.fleet` (which needs asyncpg), so that code which
    works with any ledger can tell it apart; ``aio88.fleet.FleetError`` is this class."""


class APIResponseValidationError(APIError):
    """A successful response whose body is not what the API documents.

    Attributes:
        status_code: The HTTP status of the response.
        body_excerpt: The first characters of the body, to see what came back.
    """

    status_code: int
    body_excerpt: str

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        body_excerpt: str = "",
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.body_excerpt = body_excerpt


class TaskFailedError(Aio88Error):
    """The task reached its terminal ``failed`` state.

    Attributes:
        task: The failed task as last retrieved; ``task.error`` holds the server's reason.
    """

    task: Task

    def __init__(self, task: Task) -> None:
        reason = (task.error.message if task.error is not None else None) or "no reason given"
        super().__init__(f"task {task.id} failed: {reason}")
        self.task = task


class WaitTimeoutError(Aio88Error, TimeoutError):
    """Waiting for a task exceeded its deadline. The task itself goes on on the server.

    Attributes:
        task: The task as last retrieved, or ``None`` if no poll answered in time.
        timeout: The deadline that expired, in seconds.
    """

    task: Task | None
    timeout: float

    def __init__(self, task_id: str, timeout: float, task: Task | None = None) -> None:
        state = f"last status {task.raw_status!r}" if task is not None else "never retrieved"
        super().__init__(
            f"task {task_id} did not finish within {timeout:g}s ({state}); it may still "
            f"finish on the server: wait again with the same id, or pass a larger timeout"
        )
        self.task = task
        self.timeout = timeout


class WebhookVerificationError(Aio88Error):
    """A callback that fails verification: unsigned, signed with another key, too old or
    ahead, headers that disagree with its body, or not an event. The message never holds
    a key or the body.

    Attributes:
        malformed: The signature held, but the body is not an event (or its headers
            disagree with it): answer 400. Otherwise (not signed, or not by our key, or
            out of time) answer 401.
    """

    malformed: bool

    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


class DownloadError(Aio88Error):
    """A download did not produce the expected file.

    Raised for a JSON or text body where a video was expected, a size or checksum
    mismatch, or a disk problem. Whatever was written so far stays in the ``.part``
    file for a later resume; nothing incomplete is ever left at the destination.

    Attributes:
        path: The destination the download was for, or ``None``.
        status_code: The HTTP status of the response, when one was involved.
    """

    path: Path | None
    status_code: int | None

    def __init__(
        self, message: str, *, path: Path | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.status_code = status_code


_CLASS_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

_HINT_BY_STATUS = {
    401: "check AIO88_API_KEY (or the api_key argument)",
    403: "this key may not do this: check its quota, model limits and IP restrictions",
    429: "the client backs off and retries reads by itself; lower rate_limit or concurrency",
}

#: Statuses that, from a media server (a CDN or a vendor's storage: not the API), say its
#: link is no good: signed links expire, and the API key has nothing to do with them.
_MEDIA_REFUSALS = frozenset({401, 403, 404, 410})
_MEDIA_HINT = (
    "answered by {host}, a media server, not the API: the link may have expired or been "
    "refused by its CDN (the API key is not sent there); retrieve the task again for a "
    "fresh link, or download through the API's /v1/videos/{{id}}/content"
)

_body_decoder = msgspec.json.Decoder()


def wrong_task_error(asked: str, got: str) -> APIResponseValidationError:
    """The error for an answer about another task than the one asked for (a cache or a
    proxy that mixed answers up): never taken as the answer."""
    return APIResponseValidationError(
        f"asked for task {asked} but the answer is about task {got}; a proxy or cache "
        "between you and the API may be mixing up answers",
        status_code=200,
        body_excerpt=f"task {got}",
    )


def request_id_from(headers: Mapping[str, str]) -> str | None:
    """Return the request id the server put on a response, or ``None``."""
    return headers.get("X-Oneapi-Request-Id") or headers.get("x-request-id")


def _text(value: object) -> str | None:
    """A body field as text: strings as they are, numbers spelled, anything else dropped."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def make_status_error(
    status_code: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    retry_after: float | None = None,
    media_host: str | None = None,
) -> APIStatusError:
    """Build the right :class:`APIStatusError` subclass for an HTTP error response.

    Reads all of 88API's error-body shapes: the documented flat ``{code, message, param,
    type}``, OpenAI's ``{"error": {...}}``, the task layer's ``{code, message, data}``, the
    middleware's ``new_api_error``, an empty body (the per-IP 429) and non-JSON text.
    The class comes from the HTTP status first; 400 ``task_not_exist`` is a
    :class:`NotFoundError`, because that is what it means.

    ``media_host`` names the server that answered when it is not the API (a redirect's
    or a task URL's media origin): then the message blames the link, not the API key.
    """
    decoded: object = None
    if body.strip():
        try:
            decoded = _body_decoder.decode(body)
        except msgspec.DecodeError:
            decoded = body[:BODY_EXCERPT_CHARS].decode("utf-8", "replace")

    fields: Mapping[str, object] = {}
    outer: Mapping[str, object] = {}
    if isinstance(decoded, dict):
        outer = decoded
        inner = decoded.get("error")
        fields = inner if isinstance(inner, dict) else decoded

    message = _text(fields.get("message")) or _text(outer.get("message"))
    if message is None and isinstance(outer.get("error"), str):
        message = _text(outer["error"])  # {"error": "text"}, seen from proxies
    if message is None and isinstance(decoded, str):
        message = decoded.strip() or None
    code = _text(fields.get("code")) or _text(outer.get("code"))
    type_ = _text(fields.get("type")) or _text(outer.get("type"))
    param = _text(fields.get("param")) or _text(outer.get("param"))

    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = "Error"
    parts = [f"HTTP {status_code} {phrase}"]
    if code and code != message:
        parts.append(f"[{code}]")
    text = " ".join(parts) + f": {message or '(empty body)'}"
    if media_host is not None and status_code in _MEDIA_REFUSALS:
        hint: str | None = _MEDIA_HINT.format(host=media_host)
    else:
        hint = _HINT_BY_STATUS.get(status_code)
    if hint:
        text += f" - {hint}"

    cls: type[APIStatusError]
    if code in TASK_NOT_FOUND_CODES or message in TASK_NOT_FOUND_CODES:
        cls = NotFoundError
    elif status_code >= 500:
        cls = InternalServerError
    else:
        cls = _CLASS_BY_STATUS.get(status_code, APIStatusError)

    kwargs: dict[str, Any] = {
        "status_code": status_code,
        "request_id": request_id_from(headers),
        "code": code,
        "type": type_,
        "param": param,
        "body": decoded,
        "headers": headers,
        "media_host": media_host,
    }
    if cls is RateLimitError:
        return RateLimitError(text, retry_after=retry_after, **kwargs)
    return cls(text, **kwargs)
