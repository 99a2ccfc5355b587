"""Downloads: streamed, resumable, atomic and verified, one at a time or in bulk.

A download writes to ``<dest>.part`` and renames it to ``dest`` only once the size (and,
if given, the SHA-256) is right, so nothing incomplete is ever at ``dest``. A ``.part``
left by a dropped connection, a crash or a cancellation is continued with ``Range`` the
next time. aiohttp reads the body in blocks of about 1 MiB that a writer thread of the
download's own appends to the ``.part`` (:mod:`aio88._writer`) while the next arrives, so
the event loop never waits on the disk, and memory stays at a few blocks whatever the
size.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import heapq
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from yarl import URL

from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    DownloadError,
    RateLimitError,
)
from ._http import Body
from ._models import GenerationTask, Status, Video, check_id
from ._retry import backoff_delay
from ._writer import PartWriter

if TYPE_CHECKING:
    from ._client import Client
    from ._poll import Outcome

__all__ = ["DEFAULT_CHUNK_SIZE", "DownloadQueue", "download", "file_name_for"]

log = logging.getLogger("aio88")

#: The size of each of a download's buffers: the unit of reads handed to the writer
#: thread and of memory use. Measured fastest here among 256 KiB-4 MiB
#: (``docs/benchmarks.md``).
DEFAULT_CHUNK_SIZE = 1024 * 1024
#: Statuses on a vendor URL that mean "the link expired": fall back to the API.
_EXPIRED_STATUSES = frozenset({403, 404, 410})
#: Content types that mean "a message", not a video.
_NOT_VIDEO = ("application/json", "text/", "application/problem+json")
_XATTR = "user.aio88.validator"
_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,8}$")

Source = GenerationTask | Video | str
Progress = Callable[[int, int | None], object]


def file_name_for(task_id: str, fmt: str | None) -> str:
    """``<id>.<format or mp4>``, refusing an id that could leave the folder."""
    task_id = check_id(task_id)
    extension = fmt if fmt and _EXTENSION.match(fmt) else "mp4"
    return f"{task_id}.{extension.lower()}"


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _inspect(dest: Path, part: Path, resume: bool) -> tuple[bool, bool]:
    """(dest is a directory, dest exists); drops the ``.part`` when not resuming."""
    if not resume:
        part.unlink(missing_ok=True)
    return dest.is_dir(), dest.exists()


def _part_size(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def _load_validator(part: Path) -> str | None:
    """The ETag / Last-Modified saved beside a ``.part`` (an xattr), if any."""
    try:
        return os.getxattr(part, _XATTR).decode()
    except (OSError, AttributeError):
        return None


def _save_validator(part: Path, validator: str | None) -> None:
    if validator is None:
        return
    # A filesystem without xattrs: the next resume goes without If-Range.
    with contextlib.suppress(OSError, AttributeError):
        os.setxattr(part, _XATTR, validator.encode())


def _disk_error(exc: OSError, dest: Path, part: Path) -> DownloadError:
    """A disk failure as a DownloadError that says what to do."""
    if exc.errno == errno.ENOSPC:
        why = f"no space left on the device writing {part}"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"no permission to write {part}"
    elif exc.errno == errno.EISDIR:
        why = f"{dest} is a directory; give a file path"
    elif exc.errno == errno.ENOENT:
        why = f"the folder {dest.parent} does not exist"
    else:
        why = f"cannot write {part}: {exc.strerror or exc}"
    kept = " The bytes so far stay in the .part file for a later resume." if part.exists() else ""
    return DownloadError(f"download to {dest} failed: {why}.{kept}", path=dest)


def _hash_prefix(part: Path, length: int) -> Any:
    """SHA-256 of the first ``length`` bytes already in the ``.part`` (for a resume)."""
    hasher = hashlib.sha256()
    with open(part, "rb") as existing:
        remaining = length
        while remaining:
            block = existing.read(min(remaining, DEFAULT_CHUNK_SIZE))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
    return hasher


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)


def _check_sha256(path: Path, expected: str) -> bool:
    hasher = hashlib.sha256()
    with open(path, "rb") as existing:
        while block := existing.read(DEFAULT_CHUNK_SIZE):
            hasher.update(block)
    return hasher.hexdigest() == expected.lower()


def _finish(part: Path, dest: Path, fsync: bool) -> None:
    os.replace(part, dest)
    if fsync and hasattr(os, "O_DIRECTORY"):
        fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Restart(Exception):
    """The server sent the whole file to a range request: start the ``.part`` over."""


async def download(
    client: Client,
    source: Source,
    dest: str | os.PathLike[str],
    *,
    resume: bool = True,
    overwrite: bool = False,
    sha256: str | None = None,
    on_progress: Progress | None = None,
    variant: str | None = None,
    fsync: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Path:
    """Download a finished video to ``dest``; see :meth:`aio88.Client.download`."""
    dest = Path(dest)
    part = _part_path(dest)
    is_dir, exists = await anyio.to_thread.run_sync(_inspect, dest, part, resume)
    if is_dir:
        raise DownloadError(
            f"{dest} is a directory; give a file path such as {dest / 'video.mp4'}", path=dest
        )
    if exists and not overwrite:
        # aio88 only ever creates dest whole (by rename), so an existing file is a finished
        # download: a re-run fetches nothing. With sha256, prove it.
        if sha256 is not None and not await anyio.to_thread.run_sync(_check_sha256, dest, sha256):
            raise DownloadError(
                f"{dest} exists but its SHA-256 is not {sha256}; delete it or pass overwrite=True",
                path=dest,
            )
        log.debug("download %s: already complete", dest)
        return dest

    client._transport_for_use()  # opens the client on first use; refuses a closed one
    urls = _candidate_urls(client, source, variant)
    data_uri = urls[0] if isinstance(urls[0], str) else None
    if data_uri is not None:
        await _write_data_uri(data_uri, dest, part, sha256, on_progress, fsync)
        return dest

    async with client._download_slots:
        last_error: BaseException | None = None
        for index, url in enumerate(urls):
            assert isinstance(url, URL)
            is_last = index == len(urls) - 1
            try:
                await _fetch(client, url, dest, part, sha256, on_progress, fsync, chunk_size)
                return dest
            except DownloadError as exc:
                if exc.status_code in _EXPIRED_STATUSES and not is_last:
                    log.info(
                        "download %s: %s answered %s; trying the API",
                        dest,
                        url.host,
                        exc.status_code,
                    )
                    last_error = exc
                    continue
                raise
        raise AssertionError(last_error)  # pragma: no cover - the last URL raises or returns


def _candidate_urls(client: Client, source: Source, variant: str | None) -> list[URL | str]:
    """Where to fetch from, in order: the task's own URL, then the API's content endpoint."""
    transport = client._transport

    def content(task_id: str) -> URL:
        url = transport.api_url(f"/v1/videos/{check_id(task_id)}/content")
        return url.update_query(variant=variant) if variant else url

    if isinstance(source, GenerationTask | Video):
        if source.status is Status.FAILED:
            raise DownloadError(f"task {source.id} failed; there is no video to download")
        url = source.url
        if url and url.startswith("data:"):
            return [url]
        if url and not variant:
            return [URL(url), content(source.id)]
        return [content(source.id)]
    if not isinstance(source, str):
        raise TypeError(
            f"download source must be a task, an id or a URL, not {type(source).__name__}"
        )
    if source.startswith("data:"):
        return [source]
    if source.startswith(("http://", "https://")):
        return [URL(source)]
    return [content(source)]


async def _write_data_uri(
    uri: str, dest: Path, part: Path, sha256: str | None, on_progress: Progress | None, fsync: bool
) -> None:
    """A ``data:video/mp4;base64,...`` result: decode and write it atomically."""
    header, _, payload = uri.partition(",")
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if header.endswith(";base64")
            else payload.encode()
        )
    except (binascii.Error, ValueError) as exc:
        raise DownloadError(f"the task's data: URL is not valid base64 ({exc})", path=dest) from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise DownloadError(f"SHA-256 mismatch for {dest}", path=dest)

    def write() -> None:
        with open(part, "wb") as out:
            out.write(data)
        _finish(part, dest, fsync)

    try:
        await anyio.to_thread.run_sync(write)
    except OSError as exc:
        raise _disk_error(exc, dest, part) from exc
    if on_progress is not None:
        on_progress(len(data), len(data))


async def _fetch(
    client: Client,
    url: URL,
    dest: Path,
    part: Path,
    sha256: str | None,
    on_progress: Progress | None,
    fsync: bool,
    chunk_size: int,
) -> None:
    """Fetch ``url`` into ``part`` (resuming), verify, and rename to ``dest``."""
    transport = client._transport
    policy = transport.retry
    attempt = 0
    while True:
        attempt += 1
        offset = await anyio.to_thread.run_sync(_part_size, part)
        validator = _load_validator(part) if offset else None
        try:
            total = await _fetch_once(
                client, url, dest, part, offset, validator, sha256, on_progress, fsync, chunk_size
            )
        except _Restart:
            await anyio.to_thread.run_sync(_discard, part)
            continue
        except APIConnectionError as exc:
            # Dropped mid-body: what arrived is on disk; the next try resumes from there.
            if attempt >= policy.attempts:
                raise DownloadError(
                    f"download to {dest} failed after {attempt} tries: {exc}. The bytes so far "
                    "stay in the .part file; call download again to resume.",
                    path=dest,
                ) from exc
            delay = backoff_delay(attempt - 1, policy)
            log.info("download %s interrupted (%s); resuming in %.2fs", dest, exc, delay)
            await anyio.sleep(delay)
            continue
        log.debug("download %s: %s bytes", dest, total)
        return


async def _fetch_once(
    client: Client,
    url: URL,
    dest: Path,
    part: Path,
    offset: int,
    validator: str | None,
    sha256: str | None,
    on_progress: Progress | None,
    fsync: bool,
    chunk_size: int,
) -> int:
    """One request: stream the body after ``offset`` into ``part``; finish if complete."""
    headers = {"Accept": "video/*, application/octet-stream;q=0.9, */*;q=0.5"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    try:
        opened = client._transport.open_body(url, headers=headers, block_size=chunk_size)
        async with opened as body:
            return await _receive(
                body,
                url,
                dest,
                part,
                offset,
                sha256,
                on_progress,
                fsync,
                client._transport.timeouts.read,
            )
    except (AuthenticationError, RateLimitError):
        raise
    except APIStatusError as exc:
        if exc.status_code == 416 and offset:
            return await _complete_after_416(exc, dest, part, offset, sha256, on_progress, fsync)
        raise DownloadError(
            f"could not download {url.with_query(None)}: {exc.message}",
            path=dest,
            status_code=exc.status_code,
        ) from exc


async def _complete_after_416(
    exc: APIStatusError,
    dest: Path,
    part: Path,
    offset: int,
    sha256: str | None,
    on_progress: Progress | None,
    fsync: bool,
) -> int:
    """``Range`` past the end: the ``.part`` may already be whole. Finish or restart."""
    total = _total_from_content_range(exc.headers.get("Content-Range"), None)
    if total is None or total != offset:
        raise _Restart from exc
    await _verify_and_finish(dest, part, offset, total, None, sha256, fsync)
    if on_progress is not None:
        on_progress(offset, total)
    return total


def _total_from_content_range(header: str | None, fallback: int | None) -> int | None:
    """The total size from ``Content-Range: bytes a-b/total`` (or ``bytes */total``)."""
    if header and "/" in header:
        tail = header.rsplit("/", 1)[1].strip()
        if tail.isdigit():
            return int(tail)
    return fallback


async def _receive(
    body: Body,
    url: URL,
    dest: Path,
    part: Path,
    offset: int,
    sha256: str | None,
    on_progress: Progress | None,
    fsync: bool,
    read_timeout: float | None,
) -> int:
    if body.content_type.startswith(_NOT_VIDEO):
        text = (await body.read_small_body(2000, read_timeout)).decode("utf-8", "replace")
        raise DownloadError(
            f"expected a video from {url.with_query(None)} but got {body.content_type}: {text!r}",
            path=dest,
            status_code=body.status,
        )
    if body.status == 206:
        content_range = body.headers.get("Content-Range") or ""
        start = content_range.removeprefix("bytes ").split("-", 1)[0]
        if not start.isdigit() or int(start) != offset:
            raise _Restart  # not the range we asked for
        total = _total_from_content_range(content_range, None)
    else:
        if offset:
            log.info("download %s: the server sent the whole file; starting over", dest)
        offset = 0  # a 200: the whole file, from the start
        total = body.content_length

    hasher = None
    if sha256 is not None:
        hasher = (
            await anyio.to_thread.run_sync(_hash_prefix, part, offset)
            if offset
            else hashlib.sha256()
        )
    # Two blocks may wait for the disk; beyond that, reading pauses (and memory stays flat).
    writer = PartWriter(part, offset, hasher, max_pending=2 * body.block_size)
    try:
        await anyio.to_thread.run_sync(writer.open)
    except OSError as exc:
        raise _disk_error(exc, dest, part) from exc
    _save_validator(part, body.headers.get("ETag") or body.headers.get("Last-Modified"))

    failure: list[BaseException] = []

    async def write_blocks() -> None:
        # One worker thread for the whole body; it returns after writer.stop().
        # Its own limiter: a long download must not hold one of the shared thread tokens.
        limiter = anyio.CapacityLimiter(1)
        await anyio.to_thread.run_sync(writer.run, tg.cancel_scope.cancel, limiter=limiter)
        tg.cancel_scope.cancel()  # every block is written: the stall watch can stop

    async def watch_for_stalls(period: float) -> None:
        # aiohttp's read timer catches a silent server, but not a body its parser gave up
        # on without a word (a malformed chunk): one check per period catches both. Bytes
        # written count as progress too: while the disk catches up, reading pauses.
        seen = -1
        while True:
            await anyio.sleep(period)
            now = body.received + writer.written
            if now == seen:
                failure.append(
                    APITimeoutError(f"GET {url.path}: no data for {period:g}s mid-download")
                )
                tg.cancel_scope.cancel()
                return
            seen = now

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_blocks)
            if read_timeout is not None:
                tg.start_soon(watch_for_stalls, read_timeout)
            block: list[bytes] | None = None
            reported = offset
            try:
                # The network fills the next block while the writer thread writes this one.
                while (block := await body.next_block()) is not None:
                    await writer.put(block)
                    block = None
                    # Neither call need wait when the data is there: let a cancellation in.
                    await anyio.lowlevel.checkpoint()
                    if on_progress is not None and offset + writer.written != reported:
                        reported = offset + writer.written
                        on_progress(reported, total)
            except Exception as exc:  # a dropped connection, or on_progress's own error
                failure.append(exc)  # raised as itself below, not in an ExceptionGroup
            finally:
                # What arrived but is not handed over yet (a cancellation, a stall) is kept
                # too, in order: the .part is what a resume continues.
                if writer.error is None:
                    for rest in (block or [], body.leftovers()):
                        if rest:
                            writer.put_nowait(rest)
                writer.stop()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.close, fsync)
    if writer.error is not None:
        raise _disk_error(writer.error, dest, part) from writer.error
    if failure:
        if body.encoded:  # its bytes cannot be continued with a Range: start over
            await anyio.to_thread.run_sync(_discard, part)
        raise failure[0]
    done = offset + writer.written
    if on_progress is not None and done != reported:
        on_progress(done, total)
    await _verify_and_finish(dest, part, done, total, hasher, sha256, fsync)
    return done


async def _verify_and_finish(
    dest: Path,
    part: Path,
    size: int,
    total: int | None,
    hasher: Any,
    sha256: str | None,
    fsync: bool,
) -> None:
    """Check the size and checksum; only then move the ``.part`` into place."""
    if total is not None and size != total:
        if size > total:
            await anyio.to_thread.run_sync(_discard, part)
        raise APIConnectionError(f"the body ended at {size} of {total} bytes")
    if sha256 is not None:
        digest = hasher.hexdigest() if hasher is not None else None
        if digest is None:
            ok = await anyio.to_thread.run_sync(_check_sha256, part, sha256)
        else:
            ok = digest == sha256.lower()
        if not ok:
            await anyio.to_thread.run_sync(_discard, part)
            raise DownloadError(
                f"SHA-256 mismatch downloading {dest}: the file was discarded", path=dest
            )
    try:
        await anyio.to_thread.run_sync(_finish, part, dest, fsync)
    except OSError as exc:
        raise _disk_error(exc, dest, part) from exc


# -- bulk ------------------------------------------------------------------------------

#: What fails one task's download without ending the watch.
_BULK_ERRORS = (ValueError, TypeError, DownloadError, APIConnectionError, APIStatusError)


class DownloadQueue:
    """Downloads the succeeded tasks of a watch, soonest-expiring first, a few at a time,
    and hands on each :class:`Outcome` with its ``path`` (or the download's error)."""

    def __init__(
        self,
        client: Client,
        directory: Path,
        deliver: MemoryObjectSendStream[Outcome],
        concurrency: int,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"download concurrency must be at least 1, got {concurrency}")
        self._client = client
        self._directory = directory
        self._deliver = deliver
        self._concurrency = concurrency
        self._heap: list[tuple[float, int, Outcome]] = []
        self._count = 0
        self._ready = anyio.Event()

    def route(self, outcome: Outcome) -> None:
        """Take a poll outcome: successes queue for download, the rest pass straight on."""
        if not outcome.ok or outcome.task is None:
            self._deliver.send_nowait(outcome)
            return
        expires = outcome.task.expires_at
        self._count += 1
        heapq.heappush(self._heap, (math.inf if expires is None else expires, self._count, outcome))
        self._ready.set()

    async def run(self) -> None:
        """Run the download workers until cancelled."""
        async with anyio.create_task_group() as tg:
            for _ in range(self._concurrency):
                tg.start_soon(self._worker)

    async def _worker(self) -> None:
        from ._poll import Outcome

        while True:
            while not self._heap:
                self._ready = anyio.Event()
                await self._ready.wait()
            _, _, outcome = heapq.heappop(self._heap)
            task = outcome.task
            assert task is not None
            try:
                name = file_name_for(task.id, task.format)
                path = self._directory / name
                if path.resolve().parent != self._directory.resolve():
                    raise ValueError(
                        f"task id {task.id!r} would be saved outside {self._directory}"
                    )
                saved = await self._client.download(task, path)
                result = Outcome(outcome.id, outcome.kind, task, None, saved)
            except _BULK_ERRORS as exc:
                result = Outcome(outcome.id, outcome.kind, task, exc, None)
            self._deliver.send_nowait(result)
