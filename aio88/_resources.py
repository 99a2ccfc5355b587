"""The API's two task families as client attributes: ``client.generations`` and
``client.videos``. Each method validates its arguments before anything is sent."""

from __future__ import annotations

import io
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar, Union, cast

import aiohttp
import anyio
import msgspec

from ._config import RetryPolicy
from ._errors import APIConnectionError, APIResponseValidationError, DownloadError, wrong_task_error
from ._http import TRANSPORT_ERRORS, read_limited, translate
from ._models import (
    GenerationTask,
    ResponseShapeError,
    Video,
    check_id,
    decode_generation,
    decode_video,
)
from ._poll import DEFAULT_WAIT_TIMEOUT, Kind, Poller, Schedule
from ._retry import backoff_delay, parse_retry_after

if TYPE_CHECKING:
    from ._client import Client
    from ._http import Response, Transport

__all__ = ["Generations", "VideoContent", "Videos", "poll_hint"]

#: A reference image for ``videos.create``: a path, the bytes, or an open binary file.
FileInput = Union[str, "os.PathLike[str]", bytes, IO[bytes]]

_json_encode = msgspec.json.encode
TaskT = TypeVar("TaskT", GenerationTask, Video)

#: Content types that mean "an error message", not a video.
_NOT_VIDEO_TYPES = ("application/json", "text/", "application/problem+json")


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def poll_hint(headers: Mapping[str, str]) -> float | None:
    """Seconds the server suggests before the next poll (``openai-poll-after-ms``, or
    ``Retry-After`` on a successful response), or ``None``."""
    raw = headers.get("openai-poll-after-ms")
    if raw is not None:
        try:
            return max(0.0, float(raw) / 1000.0)
        except ValueError:
            pass
    if "Retry-After" in headers:
        return parse_retry_after(headers, time.time())
    return None


def _decode(decode: Callable[[bytes], TaskT], resp: Response) -> TaskT:
    try:
        return decode(resp.body)
    except (msgspec.DecodeError, ResponseShapeError) as exc:
        excerpt = resp.body[:200].decode("utf-8", "replace")
        raise APIResponseValidationError(
            f"HTTP {resp.status} with a body that is not a task ({exc}): {excerpt!r}",
            status_code=resp.status,
            request_id=resp.request_id,
            body_excerpt=excerpt,
        ) from exc


def _payload(fields: Mapping[str, Any], extra_body: Mapping[str, Any] | None) -> dict[str, Any]:
    body = {key: value for key, value in fields.items() if value is not None}
    if extra_body:
        body.update(extra_body)
    return body


class _Resource(Generic[TaskT]):
    """What both task families share: retrieve, wait, and the path they live under."""

    _path: str
    _kind: Kind
    _decode: Callable[[bytes], TaskT]

    def __init__(self, client: Client) -> None:
        self._client = client

    def _http(self) -> Transport:
        return self._client._transport_for_use()

    async def retrieve(self, task_id: str | TaskT) -> TaskT:
        """Fetch the task's current state.

        Raises:
            NotFoundError: No such task for this key (88API answers 400 ``task_not_exist``).
        """
        asked = check_id(task_id)
        task, _ = await self._fetch(asked)
        if not task.answers_for(asked):
            raise wrong_task_error(asked, task.id)
        return task

    async def _fetch(self, task_id: str) -> tuple[TaskT, float | None]:
        """Fetch a task and the server's poll-after hint; ``task_id`` is already checked."""
        resp = await self._http().request("GET", f"{self._path}/{task_id}")
        return _decode(type(self)._decode, resp), poll_hint(resp.headers)

    async def _create(self, body: dict[str, Any]) -> TaskT:
        resp = await self._http().request("POST", self._path, json=_json_encode(body))
        return _decode(type(self)._decode, resp)

    async def wait(
        self,
        task_id: str | TaskT,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        schedule: Schedule | None = None,
        on_update: Callable[[TaskT], object] | None = None,
    ) -> TaskT:
        """Poll until the task is terminal and return it once it succeeded.

        Args:
            task_id: The task's id (or the task).
            timeout: Seconds to wait in all (default 30 min); ``None`` waits forever.
            schedule: When to poll; the 88API docs' tiers by default.
            on_update: Called with the task whenever its status or progress changes.

        Raises:
            TaskFailedError: The task failed; ``.task.error`` says why.
            WaitTimeoutError: The deadline passed first; the task goes on on the server.
        """
        task_id = check_id(task_id)
        # The poller calls on_update only with tasks of this resource's kind.
        update = cast("Callable[[GenerationTask | Video], object] | None", on_update)
        poller = Poller(
            self._client, concurrency=1, schedule=schedule, timeout=timeout, on_update=update
        )
        async with poller:
            task = await poller.wait(task_id, kind=self._kind, timeout=timeout)
        return cast(TaskT, task)


class Generations(_Resource[GenerationTask]):
    """Tasks of the 88API format, ``/v1/video/generations`` (Kling, Jimeng, Vidu, Veo)."""

    _path = "/v1/video/generations"
    _kind = "generation"
    _decode = staticmethod(decode_generation)

    async def create(
        self,
        *,
        model: str,
        prompt: str,
        duration: float | None = None,
        fps: int | None = None,
        width: int | None = None,
        height: int | None = None,
        size: str | None = None,
        image: str | None = None,
        seed: int | None = None,
        n: int | None = None,
        metadata: Mapping[str, Any] | str | None = None,
        callback_url: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> GenerationTask:
        """Create a video generation task. It is billed: a create is never resent after a
        timeout or server error unless ``RetryPolicy.retry_unsafe_creates`` is on.

        Args:
            model: The model id, e.g. ``"kling-v1"``, ``"viduq1"``.
            prompt: What to generate; must not be empty.
            duration: Seconds of video.
            fps: Frame rate.
            width: Width in pixels.
            height: Height in pixels.
            size: ``"WIDTHxHEIGHT"``, e.g. ``"1280x720"``.
            image: An image URL or base64 data for image-to-video.
            seed: Random seed.
            n: Number of videos.
            metadata: Vendor-specific options (``negative_prompt``, ``aspect_ratio``, ...).
            callback_url: Where the gateway posts a signed event when the task ends.
            extra_body: More fields, sent as they are (for options this client predates).

        Returns:
            The new task; keep its ``.id``.
        """
        body = _payload(
            {
                "model": _check_text(model, "model"),
                "prompt": _check_text(prompt, "prompt"),
                "duration": duration,
                "fps": fps,
                "width": width,
                "height": height,
                "size": size,
                "image": image,
                "seed": seed,
                "n": n,
                "metadata": metadata,
                "callback_url": callback_url,
            },
            extra_body,
        )
        return await self._create(body)


class VideoContent:
    """A finished video's bytes as they arrive: ``async for chunk in content``.

    A broken or stalled connection raises :class:`APIConnectionError` (or
    :class:`APITimeoutError`) saying how many bytes had arrived, or, when the stream was
    opened with ``resume=True``, is continued from there with a ``Range`` request: the
    chunks go on as if nothing happened.

    Attributes:
        status: The HTTP status (200, or 206 for a range).
        headers: The response headers.
        received: Bytes of the body handed out so far.
    """

    #: The chunk size of ``async for``.
    CHUNK_SIZE = 1024 * 1024

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        reopen: Callable[[int, str | None], Awaitable[aiohttp.ClientResponse]] | None,
        policy: RetryPolicy,
        read_timeout: float | None,
    ) -> None:
        self._response = response
        self._reopen = reopen
        self._policy = policy
        self._read_timeout = read_timeout
        self._what = f"GET {response.url.path}"
        self.status = response.status
        self.headers = response.headers
        self.received = 0
        self._length = response.content_length if response.status != 206 else None
        # If-Range takes a strong ETag only (a weak one always gets the whole file back).
        etag = response.headers.get("ETag")
        strong = etag if etag and not etag.startswith("W/") else None
        self._validator = strong or response.headers.get("Last-Modified")

    @property
    def content_type(self) -> str:
        """The media type, e.g. ``"video/mp4"``."""
        return self._response.content_type

    @property
    def content_length(self) -> int | None:
        """The body's length in bytes, when the server said."""
        return self._length

    async def iter_chunks(self, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Iterate over the body in chunks of at most ``size`` bytes.

        Raises:
            APIConnectionError: The connection broke or stalled (and was not resumed).
        """
        failures = 0
        while True:
            try:
                # aiohttp's own read timer covers a silent server; this one also covers a
                # body its parser gave up on without a word (a malformed chunk).
                with anyio.fail_after(self._read_timeout):
                    chunk = await self._response.content.read(size)
            except TRANSPORT_ERRORS as exc:
                failures += 1
                await self._resume(exc, failures)
                continue
            if not chunk:
                return
            failures = 0
            self.received += len(chunk)
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iter_chunks()

    async def read(self) -> bytes:
        """Read the whole body into memory (small files only; prefer ``download``)."""
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def release(self) -> None:
        """Give the connection back (``async with`` does it for you)."""
        self._response.release()

    async def _resume(self, exc: BaseException, failures: int) -> None:
        """Continue the body from ``received`` on a new response, or raise why not."""
        error = translate(exc, self._what)
        cut = type(error)  # a stall stays an APITimeoutError
        got = f"after {self.received:,} bytes"
        if self._reopen is None:
            raise cut(
                f"{error.message}: the stream was cut {got}; open it with resume=True to "
                "continue it, or save the file with download(), which resumes by itself"
            ) from exc
        if failures >= self._policy.attempts:
            raise cut(
                f"{error.message}: the stream was cut {got} and could not be resumed "
                f"({failures} tries)"
            ) from exc
        self._response.close()
        await anyio.sleep(backoff_delay(failures - 1, self._policy))
        response = await self._reopen(self.received, self._validator)
        start, _, total = (response.headers.get("Content-Range") or "").partition("/")
        why = None
        if response.status != 206 or start.removeprefix("bytes ").split("-")[0] != str(
            self.received
        ):
            why = f"it answered HTTP {response.status} to a Range request"
        elif self._length is not None and total != str(self._length):
            why = f"the file changed on the server ({total} bytes instead of {self._length})"
        if why is not None:
            response.release()
            raise APIConnectionError(
                f"{self._what}: the stream was cut {got}, and the server cannot continue it "
                f"({why}); start again, or use download(), which restarts cleanly"
            ) from exc
        self._response = response


def _read_reference(value: FileInput) -> tuple[str, bytes]:
    """Load a reference image (name, bytes). Runs in a worker thread: it may hit the disk."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "reference", bytes(value)
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if text.startswith(("http://", "https://")):
            raise ValueError(
                "input_reference takes a file, not a URL; pass an image URL in metadata "
                "instead, e.g. metadata={'img_url': ...}"
            )
        path = Path(text)
        try:
            return path.name, path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read input_reference {text!r}: {exc.strerror}") from exc
    if isinstance(value, io.IOBase) or hasattr(value, "read"):
        data = value.read()
        if not isinstance(data, bytes):
            raise TypeError("input_reference file must be opened in binary mode ('rb')")
        return Path(getattr(value, "name", "reference") or "reference").name, data
    raise TypeError(
        f"input_reference must be a path, bytes or a binary file, got {type(value).__name__}"
    )


def _sniff_image_type(name: str, data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _form_value(value: Any) -> str:
    return value if isinstance(value, str) else _json_encode(value).decode()


class Videos(_Resource[Video]):
    """Tasks of the OpenAI/Sora format, ``/v1/videos``: create, retrieve, remix, wait,
    and the finished file's content."""

    _path = "/v1/videos"
    _kind = "video"
    _decode = staticmethod(decode_video)

    async def create(
        self,
        *,
        prompt: str,
        model: str | None = None,
        seconds: str | int | None = None,
        size: str | None = None,
        input_reference: FileInput | None = None,
        metadata: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Video:
        """Create a video task. It is billed: a create is never resent after a timeout or
        server error unless ``RetryPolicy.retry_unsafe_creates`` is on.

        Sent as JSON, or as multipart when ``input_reference`` is given (the image is read
        once, so a retry after a 429 resends the same bytes).

        Args:
            prompt: What to generate; must not be empty.
            model: The model id; the server's default is ``"sora-2"``.
            seconds: Duration, e.g. ``"8"`` (a number is sent as a string).
            size: ``"WIDTHxHEIGHT"``, e.g. ``"1280x720"``.
            input_reference: An image to start from: a path, bytes or a binary file.
            metadata: Vendor options; sent as a JSON string in multipart, as the API wants.
            extra_body: More fields, sent as they are.
        """
        fields: dict[str, Any] = {
            "prompt": _check_text(prompt, "prompt"),
            "model": None if model is None else _check_text(model, "model"),
            "seconds": None if seconds is None else str(seconds),
            "size": size,
        }
        if input_reference is None:
            return await self._create(_payload({**fields, "metadata": metadata}, extra_body))

        name, data = await anyio.to_thread.run_sync(_read_reference, input_reference)
        content_type = _sniff_image_type(name, data)
        text_fields = {
            key: _form_value(value)
            for key, value in _payload({**fields, "metadata": metadata}, extra_body).items()
        }

        def form() -> aiohttp.FormData:
            body = aiohttp.FormData()
            for key, value in text_fields.items():
                body.add_field(key, value)
            body.add_field("input_reference", data, filename=name, content_type=content_type)
            return body

        resp = await self._http().request("POST", self._path, form=form)
        return _decode(decode_video, resp)

    async def remix(
        self,
        video_id: str | Video,
        *,
        prompt: str,
        model: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Video:
        """Create a new video from a finished one with a new prompt (Sora channels).

        Billed like a create, and never resent after a timeout or server error.
        """
        body = _payload({"prompt": _check_text(prompt, "prompt"), "model": model}, extra_body)
        path = f"{self._path}/{check_id(video_id, 'video_id')}/remix"
        resp = await self._http().request("POST", path, json=_json_encode(body))
        return _decode(decode_video, resp)

    async def download(
        self,
        video_id: str | Video,
        dest: str | os.PathLike[str],
        *,
        variant: str | None = None,
        resume: bool = True,
        overwrite: bool = False,
        sha256: str | None = None,
        on_progress: Callable[[int, int | None], object] | None = None,
        fsync: bool = False,
    ) -> Path:
        """Save a finished video's content to ``dest``, from ``/v1/videos/{id}/content``.

        Resumable, atomic and verified: see :meth:`aio88.Client.download` for what
        happens with an existing ``dest`` or an interrupted download.

        Args:
            video_id: The video's id (or the video).
            dest: The file to write.
            variant: Which file (``"video"``, the default; 88API ignores the others).
            resume: Continue an existing ``.part`` (else start over).
            overwrite: Fetch again even if ``dest`` exists.
            sha256: The expected hex SHA-256; a mismatch discards the file.
            on_progress: Called with ``(bytes_done, bytes_total or None)`` per chunk.
            fsync: Flush the file and its folder to disk before returning.
        """
        from ._download import download

        return await download(
            self._client,
            check_id(video_id, "video_id"),
            dest,
            variant=variant,
            resume=resume,
            overwrite=overwrite,
            sha256=sha256,
            on_progress=on_progress,
            fsync=fsync,
        )

    @asynccontextmanager
    async def content(
        self, video_id: str | Video, *, variant: str | None = None, resume: bool = False
    ) -> AsyncIterator[VideoContent]:
        """Stream a finished video's bytes::

            async with client.videos.content(video.id, resume=True) as body:
                async for chunk in body:
                    ...

        Redirects are followed; the API key is never sent to another origin. To save the
        file, prefer :meth:`download`, which resumes, verifies and writes atomically.

        Args:
            video_id: The video's id (or the video).
            variant: Which file (``"video"``, the default; 88API ignores the others).
            resume: Continue a stream cut mid-body with ``Range`` requests (the same
                bytes, in order), up to ``RetryPolicy.attempts`` tries in a row.

        Raises:
            NotFoundError: No such video, or it is not finished yet.
            DownloadError: The server answered with a message instead of a video.
            APIConnectionError: The stream broke (while iterating) and was not resumed.
        """
        transport = self._http()
        url = transport.api_url(f"{self._path}/{check_id(video_id, 'video_id')}/content")
        params = {"variant": variant} if variant else None

        async def reopen(offset: int, validator: str | None) -> aiohttp.ClientResponse:
            headers = {"Range": f"bytes={offset}-"}
            if validator:
                headers["If-Range"] = validator  # the same file, or the whole of a new one
            return await transport.open_stream(url, headers=headers, params=params)

        resp = await transport.open_stream(url, params=params)
        body = VideoContent(
            resp,
            reopen=reopen if resume else None,
            policy=transport.retry,
            read_timeout=transport.timeouts.read,
        )
        try:
            if resp.content_type.startswith(_NOT_VIDEO_TYPES):
                text = await read_limited(resp, 2000, transport.timeouts.read)
                raise DownloadError(
                    f"expected a video from {url.path} but got {resp.content_type}: "
                    f"{text.decode('utf-8', 'replace')!r}",
                    status_code=resp.status,
                )
            yield body
        finally:
            body.release()
