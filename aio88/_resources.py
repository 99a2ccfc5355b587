"""The API's two task families as client attributes: ``client.generations`` and
``client.videos``. Each method validates its arguments before anything is sent."""

from __future__ import annotations

import io
import mimetypes
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import aiohttp
import anyio
import msgspec

from ._body import refuse_message
from ._config import DEFAULT_WAIT_TIMEOUT, check_timeout
from ._download import Downloader
from ._errors import wrong_task_error
from ._fetch import PATHS, decode_answer
from ._http import Transport
from ._models import (
    FileInput,
    GenerationTask,
    Kind,
    Video,
    check_id,
    decode_generation,
    decode_video,
)
from ._partfile import Progress
from ._poll import Poller
from ._schedule import Schedule
from ._stream import VideoContent

__all__ = ["Generations", "Videos"]

_json_encode = msgspec.json.encode
TaskT = TypeVar("TaskT", GenerationTask, Video)


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def _payload(fields: Mapping[str, Any], extra_body: Mapping[str, Any] | None) -> dict[str, Any]:
    body = {key: value for key, value in fields.items() if value is not None}
    if extra_body:
        body.update(extra_body)
    return body


class _Resource(Generic[TaskT]):
    """What both task families share: retrieve, wait, and the path they live under.

    Args:
        transport: What sends its requests (the client's); it opens on first use.
    """

    _path: str
    _kind: Kind
    _decode: Callable[[bytes], TaskT]

    def __init__(self, transport: Transport) -> None:
        self._http = transport

    async def retrieve(self, task_id: str | TaskT) -> TaskT:
        """Fetch the task's current state.

        Raises:
            NotFoundError: No such task for this key (88API answers 400 ``task_not_exist``).
        """
        asked = check_id(task_id)
        resp = await self._http.request("GET", f"{self._path}/{asked}")
        task = decode_answer(self._decode, resp)
        if not task.answers_for(asked):
            raise wrong_task_error(asked, task.id)
        return task

    async def _create(self, body: dict[str, Any]) -> TaskT:
        resp = await self._http.request("POST", self._path, json=_json_encode(body))
        return decode_answer(self._decode, resp)

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
            timeout: Seconds to wait in all (default 30 min); ``None`` waits forever;
                ``0`` polls once and returns the task if it has succeeded.
            schedule: When to poll; the 88API docs' tiers by default.
            on_update: Called with the task whenever its status or progress changes.

        Raises:
            TaskFailedError: The task failed; ``.task.error`` says why.
            WaitTimeoutError: The deadline passed first; the task goes on on the server.
            ValueError: ``timeout`` is negative.
        """
        task_id = check_id(task_id)
        check_timeout(timeout)  # before anything starts
        # The poller calls on_update only with tasks of this resource's kind.
        update = cast("Callable[[GenerationTask | Video], object] | None", on_update)
        poller = Poller(
            self._http, concurrency=1, schedule=schedule, timeout=timeout, on_update=update
        )
        async with poller:
            task = await poller.wait(task_id, kind=self._kind, timeout=timeout)
        return cast(TaskT, task)


class Generations(_Resource[GenerationTask]):
    """Tasks of the 88API format, ``/v1/video/generations`` (Kling, Jimeng, Vidu, Veo)."""

    _path = PATHS["generation"]
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

    _path = PATHS["video"]
    _kind = "video"
    _decode = staticmethod(decode_video)

    def __init__(self, transport: Transport, downloader: Downloader) -> None:
        super().__init__(transport)
        self._downloader = downloader

    async def create(
        self,
        *,
        prompt: str,
        model: str | None = None,
        seconds: str | int | None = None,
        size: str | None = None,
        input_reference: FileInput | None = None,
        metadata: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
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
            callback_url: Where the gateway posts a signed event when the task ends (see
                ``client.webhooks``); a field of the form too when multipart.
            extra_body: More fields, sent as they are.
        """
        fields: dict[str, Any] = {
            "prompt": _check_text(prompt, "prompt"),
            "model": None if model is None else _check_text(model, "model"),
            "seconds": None if seconds is None else str(seconds),
            "size": size,
            "callback_url": callback_url,
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

        resp = await self._http.request("POST", self._path, form=form)
        return decode_answer(decode_video, resp)

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
        resp = await self._http.request("POST", path, json=_json_encode(body))
        return decode_answer(decode_video, resp)

    async def download(
        self,
        video_id: str | Video,
        dest: str | os.PathLike[str],
        *,
        variant: str | None = None,
        resume: bool = True,
        overwrite: bool = False,
        sha256: str | None = None,
        on_progress: Progress | None = None,
        fsync: bool = False,
    ) -> Path:
        """Save a finished video's content to ``dest``, from ``/v1/videos/{id}/content``.

        Resumable, atomic and verified: see :meth:`aio88.Client.download` for what
        happens with an existing ``dest`` or an interrupted download.

        Args:
            video_id: The video's id (or the video).
            dest: The file to write; its missing folders are created.
            variant: Which file (``"video"``, the default; 88API ignores the others).
            resume: Continue an existing ``.part`` (else start over).
            overwrite: Fetch again even if ``dest`` exists.
            sha256: The expected hex SHA-256; a mismatch discards the file.
            on_progress: Called with ``(bytes_done, bytes_total or None)`` per chunk.
            fsync: Flush the file and its folder to disk before returning.
        """
        return await self._downloader.download(
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
        transport = self._http
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
            await refuse_message(resp, url.path, transport.timeouts.read)
            yield body
        finally:
            body.release()
