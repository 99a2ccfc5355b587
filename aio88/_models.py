"""Wire models for 88API's two task shapes, decoded with msgspec.

88API speaks two dialects (see ``88api-api.md`` §4-§5): the documented flat objects with
lower-case statuses, and what its server code sends: a ``{"code": "success", "data": {...}}``
envelope around an internal task with upper-case statuses (``SUCCESS``, ``IN_PROGRESS``,
``NOT_START``), ``completed`` instead of ``succeeded``, ``"50%"`` progress strings, and the
video URL in any of four places. Both models read every variant and expose one read-only
surface, so the poller and the downloader treat them alike:

``.id``, ``.status`` (a :class:`Status`), ``.raw_status``, ``.progress``, ``.done``, ``.url``,
``.error``.

The wire fields are private (``_status``, ``_url``, ...) and renamed to their JSON names;
the public names are properties that normalise them. Decoders are built once per type.

This module is a leaf: it imports nothing from aio88.
"""

from __future__ import annotations

import enum
import os
import re
import sys
from typing import IO, Any, Literal, TypeAlias, Union
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = [
    "FileInput",
    "GenerationTask",
    "Kind",
    "ResponseShapeError",
    "Status",
    "Task",
    "TaskError",
    "Video",
    "VideoMetadata",
    "check_id",
    "compact",
    "decode_generation",
    "decode_video",
    "normalize_status",
    "parse_progress",
    "redact_text",
    "redact_url",
]


class Status(str, enum.Enum):
    """A task's lifecycle state, normalised from whatever the server said.

    ``queued`` and ``in_progress`` are pending; ``succeeded`` and ``failed`` are terminal.
    The server's own word is kept on the task as ``raw_status``.
    """

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def done(self) -> bool:
        """Whether this is a terminal state."""
        return self is Status.SUCCEEDED or self is Status.FAILED

    def __str__(self) -> str:
        return self.value


_BAD_ID = re.compile(r"[/\\?#%\s\x00-\x1f\x7f]")

_SUCCESS_WORDS = ("succeeded", "success", "completed", "complete", "succeed", "finished", "done")
_FAILURE_WORDS = ("failed", "failure", "fail", "error", "cancelled", "canceled", "expired")
_RUNNING_WORDS = ("in_progress", "processing", "running", "generating", "in-progress")

# Every spelling seen on the wire maps to a Status in one dict lookup; anything unknown
# ("unknown", "NOT_START", "SUBMITTED", a new word) is pending, which is the safe reading:
# we keep polling rather than declare a task finished that is not.
_STATUS_BY_WORD: dict[str, Status] = {}
for _words, _status in (
    (_SUCCESS_WORDS, Status.SUCCEEDED),
    (_FAILURE_WORDS, Status.FAILED),
    (_RUNNING_WORDS, Status.IN_PROGRESS),
):
    for _word in _words:
        _STATUS_BY_WORD[_word] = _status
        _STATUS_BY_WORD[_word.upper()] = _status
        _STATUS_BY_WORD[_word.capitalize()] = _status


def normalize_status(raw: str | None) -> Status:
    """Map any status spelling of either dialect to a :class:`Status` (unknown: queued)."""
    if raw is None:
        return Status.QUEUED
    status = _STATUS_BY_WORD.get(raw)
    if status is None:
        status = _STATUS_BY_WORD.get(raw.strip().lower(), Status.QUEUED)
    return status


def parse_progress(value: object) -> int | None:
    """Read progress from ``50``, ``50.0``, ``"50"`` or ``"50%"``, clamped to 0-100."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip().rstrip("%").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            return None
    if not isinstance(value, int | float) or value != value:  # NaN
        return None
    return 0 if value < 0 else 100 if value > 100 else int(value)


def check_id(task_id: object, name: str = "task_id") -> str:
    """Return ``task_id`` as a string fit for a URL path, or raise a clear error.

    A task object is accepted for its ``.id``. Refusing these characters keeps an id from
    changing which URL a request goes to (``../``, ``?``) or where a download is written.
    """
    value = getattr(task_id, "id", task_id)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (or a task), got {type(value).__name__}")
    if not value or value in (".", "..") or _BAD_ID.search(value):
        raise ValueError(
            f"{name} {value!r} is not a valid task id: it must be non-empty and contain "
            "no '/', '\\', '?', '#', '%', whitespace or control characters"
        )
    return value


def redact_url(url: str) -> str:
    """``url`` fit to print: its query (where signed links carry ``X-Amz-Signature``,
    ``token``, ``sig``... under names no list can hold) shown as ``?…``, any user and
    password dropped, and a ``data:`` URL cut after its header.

    For reprs and messages only: the task keeps the real link.
    """
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        return f"{header},…" if comma and payload else url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a malformed URL>"
    netloc = parts.netloc.rpartition("@")[2]
    if parts.query or parts.fragment or netloc != parts.netloc:
        query = "…" if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return url


#: A URL in free text, up to its query: what ``redact_text`` keeps.
_URL_IN_TEXT = re.compile(r"""(https?://[^\s"'?#<>]+)\?[^\s"'<>]*""")


def redact_text(text: str) -> str:
    """``text`` (an excerpt of a body, another library's message) with the query of every
    URL in it shown as ``?…``, as :func:`redact_url` does for one URL."""
    return _URL_IN_TEXT.sub(r"\1?…", text)


def _repr(struct: VideoMetadata | _Task) -> str:
    """``Name(field=value, ...)`` from the struct's ``__rich_repr__``."""
    fields = ", ".join(f"{name}={value!r}" for name, value in struct.__rich_repr__())
    return f"{type(struct).__name__}({fields})"


class ResponseShapeError(ValueError):
    """A body that decoded as JSON but is not a task (no id at all)."""


class TaskError(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Why a task failed, as the server put it.

    Attributes:
        message: The reason in words.
        code: The vendor's or gateway's error code (a string or a number), if any.
    """

    message: str | None = None
    code: str | int | None = None
    type: str | None = None


class VideoMetadata(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The ``metadata`` object of a task: technical facts and sometimes the video URL.

    Vendors fill it differently, so every field is optional and loosely typed.
    """

    duration: float | str | None = None
    fps: float | str | None = None
    width: int | str | None = None
    height: int | str | None = None
    seed: int | str | None = None
    url: str | None = None

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        """The fields that are set, as :meth:`__repr__` shows them (for ``rich``)."""
        # The URL may be signed: its query is a credential (see redact_url).
        return [
            (name, redact_url(value) if name == "url" else value)
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not None
        ]

    def __repr__(self) -> str:
        return _repr(self)


class _Task(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The fields and read-only surface both task shapes share.

    ``gc=False``: a task holds only strings, numbers and other such structs, never a
    cycle, so the garbage collector need not track the many a poller keeps.
    """

    task_id: str | None = None
    _id: str | int | None = msgspec.field(default=None, name="id")
    _status: str | None = msgspec.field(default=None, name="status")
    _progress: int | float | str | None = msgspec.field(default=None, name="progress")
    _url: str | None = msgspec.field(default=None, name="url")
    video_url: str | None = None
    result_url: str | None = None
    _metadata: VideoMetadata | str | None = msgspec.field(default=None, name="metadata")
    _error: TaskError | str | None = msgspec.field(default=None, name="error")
    fail_reason: str | None = None
    model: str | None = None
    format: str | None = None
    created_at: int | float | None = None
    completed_at: int | float | None = None
    expires_at: int | float | None = None
    # The envelope's payload on the way in; in a TaskDto, the vendor's raw JSON.
    _data: msgspec.Raw = msgspec.field(default=msgspec.Raw(), name="data")

    @property
    def id(self) -> str:
        """The public task id (``task_id``, else ``id``); use it for every follow-up call."""
        if self.task_id:
            return self.task_id
        ident = self._id
        return ident if isinstance(ident, str) else "" if ident is None else str(ident)

    def answers_for(self, task_id: str) -> bool:
        """Whether this is the task asked for as ``task_id`` (its ``task_id`` or its
        ``id``: the generation dialect also carries a display id)."""
        if self.task_id == task_id:
            return True
        ident = self._id
        return ident is not None and (ident == task_id or str(ident) == task_id)

    @property
    def status(self) -> Status:
        """The normalised lifecycle state."""
        return normalize_status(self._status)

    @property
    def raw_status(self) -> str:
        """The status exactly as the server spelt it (``"SUCCESS"``, ``"completed"``, ...)."""
        return self._status or ""

    @property
    def progress(self) -> int | None:
        """Percent done, 0-100, or ``None`` when the server does not report it."""
        return parse_progress(self._progress)

    @property
    def done(self) -> bool:
        """Whether the task is terminal (succeeded or failed)."""
        return normalize_status(self._status).done

    @property
    def metadata(self) -> VideoMetadata | None:
        """The task's ``metadata`` object, when it has one."""
        meta = self._metadata
        return meta if isinstance(meta, VideoMetadata) else None

    @property
    def url(self) -> str | None:
        """Where the finished video is: the first of ``url``, ``video_url``, ``result_url``,
        ``metadata.url`` that is not empty. Often a short-lived vendor link; prefer
        ``client.download``, which falls back to the API's content endpoint."""
        meta = self._metadata
        return (
            self._url
            or self.video_url
            or self.result_url
            or (meta.url if isinstance(meta, VideoMetadata) else None)
            or None
        )

    @property
    def error(self) -> TaskError | None:
        """Why the task failed; ``None`` unless the server reported an error."""
        err = self._error
        if isinstance(err, TaskError):
            if err.message or err.code is not None:
                return err
        elif isinstance(err, str) and err:
            return TaskError(message=err)
        if self.fail_reason and self.status is Status.FAILED:
            return TaskError(message=self.fail_reason)
        return None

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        """What :meth:`__repr__` shows (for ``rich``), instead of the raw wire fields."""
        status = self.status.value
        fields: list[tuple[str, Any]] = [("id", self.id), ("status", status)]
        if self._status is not None and self._status != status:
            fields.append(("raw_status", self._status))
        progress = self.progress
        if progress is not None:
            fields.append(("progress", progress))
        url = self.url
        if url:
            # A signed link's query is a credential, and printed tasks end up in logs.
            fields.append(("url", redact_url(url)))
        error = self.error
        if error:
            fields.append(("error", error.message))
        return fields

    def __repr__(self) -> str:
        return _repr(self)


class GenerationTask(_Task, kw_only=True, omit_defaults=True, gc=False):
    """A task of the 88API format (``/v1/video/generations``): Kling, Jimeng, Vidu, Veo.

    Read ``.id``, ``.status``, ``.progress``, ``.url`` and ``.error``; the other fields are
    what the server sent, when it sent them.
    """

    platform: str | None = None
    action: str | None = None
    submit_time: int | float | None = None
    start_time: int | float | None = None
    finish_time: int | float | None = None


class Video(_Task, kw_only=True, omit_defaults=True, gc=False):
    """A task of the OpenAI/Sora format (``/v1/videos``).

    Read ``.id``, ``.status``, ``.progress``, ``.url`` and ``.error``; ``expires_at`` says
    when the server stops serving the file.
    """

    object: str | None = None
    seconds: str | int | float | None = None
    size: str | None = None
    quality: str | None = None
    prompt: str | None = None
    remixed_from_video_id: str | None = None


# strict=False lets "5" decode as a number: the server sends both.
_generation_decoder = msgspec.json.Decoder(GenerationTask, strict=False)
_video_decoder = msgspec.json.Decoder(Video, strict=False)
_ENVELOPE_MIN = len(b"null") + 1  # a null payload is no envelope to unwrap


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    # The private fields read here are this module's own struct's.
    task = decoder.decode(body)
    if task._status is None and len(task._data) >= _ENVELOPE_MIN:  # noqa: SLF001
        task = decoder.decode(task._data)  # noqa: SLF001 - {"code": "success", "data": {...}}
        if task._data:  # noqa: SLF001
            # The vendor payload is a view of the whole body: copy it out so a task kept
            # for long (a poller holds thousands) does not keep the response alive.
            task._data = task._data.copy()  # noqa: SLF001
    if not task.id:
        raise ResponseShapeError("the response has no task id (neither `task_id` nor `id`)")
    return task


def decode_generation(body: bytes) -> GenerationTask:
    """Decode a ``/v1/video/generations`` response, in either dialect.

    Raises:
        msgspec.DecodeError: The body is not JSON or a field has an impossible type.
        ResponseShapeError: The JSON is not a task.
    """
    task: GenerationTask = _decode(_generation_decoder, body)
    return task


def decode_video(body: bytes) -> Video:
    """Decode a ``/v1/videos`` response, in either dialect.

    Raises:
        msgspec.DecodeError: The body is not JSON or a field has an impossible type.
        ResponseShapeError: The JSON is not a task.
    """
    task: Video = _decode(_video_decoder, body)
    return task


#: Which API family a task belongs to: ``/v1/video/generations`` or ``/v1/videos``.
Kind: TypeAlias = Literal["generation", "video"]
#: A task of either family.
Task: TypeAlias = Union[GenerationTask, Video]  # noqa: UP007 - a runtime alias users import
#: A reference image for ``videos.create``: a path, the bytes, or an open binary file.
FileInput: TypeAlias = Union[str, "os.PathLike[str]", bytes, IO[bytes]]

_INTERNED_FIELDS = ("_status", "model", "object", "size", "seconds", "format", "platform", "action")


def compact(task: Task) -> Task:
    """Shrink a task that is kept for long (a poller holds thousands): one id string
    instead of two, and the strings that repeat across thousands of tasks (status, model,
    size) shared."""
    if task._id == task.task_id:  # noqa: SLF001 - this module's own struct
        task._id = task.task_id  # noqa: SLF001
    intern = sys.intern
    for name in _INTERNED_FIELDS:
        value = getattr(task, name, None)
        if type(value) is str:
            setattr(task, name, intern(value))
    return task
