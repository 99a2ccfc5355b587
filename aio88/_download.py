"""Downloads: streamed, resumable, atomic and verified (:class:`Downloader`).

A download writes to ``<dest>.part`` and renames it to ``dest`` only once the size (and,
if given, the SHA-256) is right, so nothing incomplete is ever at ``dest``. A ``.part``
left by a dropped connection, a crash or a cancellation is continued with ``Range`` the
next time. aiohttp reads the body in blocks of about 1 MiB that a writer thread of the
download's own appends to the ``.part`` (:mod:`aio88._writer`) while the next arrives, so
the event loop never waits on the disk, and memory stays at a few blocks whatever the
size. The downloader takes a :class:`~aio88._http.Transport`, never the client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from yarl import URL

from ._body import Body
from ._config import DOWNLOAD_BLOCK_SIZE, DOWNLOAD_LOCK_POLL
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    DownloadError,
    RateLimitError,
)
from ._http import Transport
from ._models import GenerationTask, Status, Video, check_id, redact_url
from ._partfile import PartFile, Progress, sha256_matches
from ._retry import backoff_delay
from ._writer import PartWriter

__all__ = ["Downloader", "Source", "file_name_for"]

log = logging.getLogger("aio88")

#: Statuses on a vendor URL that mean "the link expired": fall back to the API.
_EXPIRED_STATUSES = frozenset({403, 404, 410})
_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,8}$")
_ACCEPT = {"Accept": "video/*, application/octet-stream;q=0.9, */*;q=0.5"}

#: What can be downloaded: a task, a video id, or a URL (``data:`` included).
Source = GenerationTask | Video | str


def file_name_for(task_id: str, fmt: str | None) -> str:
    """``<id>.<format or mp4>``, refusing an id that could leave the folder."""
    task_id = check_id(task_id)
    extension = fmt if fmt and _EXTENSION.match(fmt) else "mp4"
    return f"{task_id}.{extension.lower()}"


class _Restart(Exception):
    """The server sent the whole file to a range request: start the ``.part`` over."""


class Downloader:
    """Runs downloads for one client, at most ``concurrency`` at once.

    Args:
        transport: What sends its requests (the client's).
        concurrency: Most downloads streaming at once.
        block_size: The size of the blocks handed to the writer thread.
    """

    def __init__(
        self,
        transport: Transport,
        concurrency: int,
        block_size: int = DOWNLOAD_BLOCK_SIZE,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"download_concurrency must be at least 1, got {concurrency}")
        self._transport = transport
        self._concurrency = concurrency
        self.block_size = block_size
        self._slots: anyio.Semaphore | None = None  # made on first use, on the event loop

    async def download(
        self,
        source: Source,
        dest: str | os.PathLike[str],
        *,
        resume: bool = True,
        overwrite: bool = False,
        sha256: str | None = None,
        on_progress: Progress | None = None,
        variant: str | None = None,
        fsync: bool = False,
    ) -> Path:
        """Download a finished video to ``dest``; see :meth:`aio88.Client.download`."""
        target = PartFile(Path(dest), sha256, on_progress, fsync)
        is_dir, exists = await anyio.to_thread.run_sync(target.inspect)
        if is_dir:
            raise DownloadError(
                f"{target.dest} is a directory; give a file path such as "
                f"{target.dest / 'video.mp4'}",
                path=target.dest,
            )
        if exists and not overwrite:
            return await _already_there(target)

        transport = self._transport
        transport.open()  # on first use; refuses a closed client before anything is sent
        urls = _candidate_urls(transport, source, variant)
        # Only now, with a source that can be fetched: a refused one leaves no folder.
        await anyio.to_thread.run_sync(target.make_folder)
        async with _only_writer(target):
            # Another download of the same file (another worker sharing the folder) may
            # have finished it while this one waited for the lock.
            if not overwrite and await anyio.to_thread.run_sync(target.dest.exists):
                return await _already_there(target)
            if not resume:
                await anyio.to_thread.run_sync(target.discard)
            return await self._fetch_any(transport, urls, target)

    async def _fetch_any(
        self, transport: Transport, urls: list[URL | str], target: PartFile
    ) -> Path:
        """Fetch from the first URL that serves the file (an expired link: the next)."""
        if isinstance(urls[0], str):
            await _write_data_uri(urls[0], target)
            return target.dest
        if self._slots is None:
            self._slots = anyio.Semaphore(self._concurrency)
        async with self._slots:
            for index, url in enumerate(urls):
                assert isinstance(url, URL)
                try:
                    await _fetch(transport, url, target, self.block_size)
                    return target.dest
                except DownloadError as exc:
                    if exc.status_code not in _EXPIRED_STATUSES or index == len(urls) - 1:
                        raise
                    log.info(
                        "download %s: %s answered %s; trying the API",
                        target.dest,
                        url.host,
                        exc.status_code,
                    )
        raise AssertionError("unreachable: the last URL raises or returns")  # pragma: no cover


def _candidate_urls(transport: Transport, source: Source, variant: str | None) -> list[URL | str]:
    """Where to fetch from, in order: the task's own URL, then the API's content endpoint."""

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


async def _already_there(target: PartFile) -> Path:
    """``dest`` exists: aio88 only ever creates it whole (by rename), so it is a finished
    download and nothing is fetched. With ``sha256``, prove it."""
    sha256 = target.sha256
    if sha256 is not None and not await anyio.to_thread.run_sync(
        sha256_matches, target.dest, sha256
    ):
        raise DownloadError(
            f"{target.dest} exists but its SHA-256 is not {sha256}; delete it or pass "
            "overwrite=True",
            path=target.dest,
        )
    log.debug("download %s: already complete", target.dest)
    return target.dest


@asynccontextmanager
async def _only_writer(target: PartFile) -> AsyncIterator[None]:
    """Hold ``<dest>.lock`` for the block: one writer per ``.part``, across processes
    (workers sharing a folder) and within one. Another holder is waited for, politely
    (a cancellable poll: a thread blocked in ``flock`` could not be called off)."""
    # The other holder may be another process: no event to wait on, so look again.
    while (fd := await anyio.to_thread.run_sync(target.try_lock)) is None:  # noqa: ASYNC110
        await anyio.sleep(DOWNLOAD_LOCK_POLL)
    try:
        yield
    finally:
        # Also when cancelled: a lock left held would make the next try wait forever.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(target.unlock, fd)


async def _write_data_uri(uri: str, target: PartFile) -> None:
    """A ``data:video/mp4;base64,...`` result: decode and write it atomically."""
    header, _, payload = uri.partition(",")
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if header.endswith(";base64")
            else payload.encode()
        )
    except (binascii.Error, ValueError) as exc:
        raise DownloadError(
            f"the task's data: URL is not valid base64 ({exc})", path=target.dest
        ) from exc
    if target.sha256 is not None and hashlib.sha256(data).hexdigest() != target.sha256.lower():
        raise DownloadError(f"SHA-256 mismatch for {target.dest}", path=target.dest)

    def write() -> None:
        with open(target.part, "wb") as out:
            out.write(data)
        target.finish()

    try:
        await anyio.to_thread.run_sync(write)
    except OSError as exc:
        raise target.disk_error(exc) from exc
    target.report(len(data), len(data))


async def _fetch(transport: Transport, url: URL, target: PartFile, block_size: int) -> None:
    """Fetch ``url`` into the ``.part`` (resuming), verify, and rename it into place."""
    policy = transport.retry
    attempt = 0
    while True:
        attempt += 1
        offset = await anyio.to_thread.run_sync(target.size)
        validator = target.load_validator() if offset else None
        try:
            total = await _fetch_once(transport, url, target, offset, validator, block_size)
        except _Restart:
            await anyio.to_thread.run_sync(target.discard)
            continue
        except APIConnectionError as exc:
            # Dropped mid-body: what arrived is on disk; the next try resumes from there.
            if attempt >= policy.attempts:
                raise DownloadError(
                    f"download to {target.dest} failed after {attempt} tries: {exc}. The "
                    "bytes so far stay in the .part file; call download again to resume.",
                    path=target.dest,
                ) from exc
            delay = backoff_delay(attempt - 1, policy)
            log.info("download %s interrupted (%s); resuming in %.2fs", target.dest, exc, delay)
            await anyio.sleep(delay)
            continue
        log.debug("download %s: %s bytes", target.dest, total)
        return


async def _fetch_once(
    transport: Transport,
    url: URL,
    target: PartFile,
    offset: int,
    validator: str | None,
    block_size: int,
) -> int:
    """One request: stream the body after ``offset`` into the ``.part``; finish if whole."""
    headers = dict(_ACCEPT)
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    try:
        async with transport.open_body(url, headers=headers, block_size=block_size) as body:
            offset, total = await _check_start(body, url, target, offset, transport)
            done, hasher = await _receive(body, url, target, offset, total, transport)
    except (AuthenticationError, RateLimitError):
        raise
    except APIStatusError as exc:
        if exc.status_code == 416 and offset:
            return await _complete_after_416(exc, target, offset)
        raise DownloadError(
            f"could not download {redact_url(str(url))}: {exc.message}",
            path=target.dest,
            status_code=exc.status_code,
        ) from exc
    await _verify_and_finish(target, done, total, hasher)
    return done


async def _complete_after_416(exc: APIStatusError, target: PartFile, offset: int) -> int:
    """``Range`` past the end: the ``.part`` may already be whole. Finish or restart."""
    total = _total_from_content_range(exc.headers.get("Content-Range"))
    if total is None or total != offset:
        raise _Restart from exc
    await _verify_and_finish(target, offset, total, None)
    target.report(offset, total)
    return total


def _total_from_content_range(header: str | None) -> int | None:
    """The total size from ``Content-Range: bytes a-b/total`` (or ``bytes */total``)."""
    if header and "/" in header:
        tail = header.rsplit("/", 1)[1].strip()
        if tail.isdigit():
            return int(tail)
    return None


async def _check_start(
    body: Body, url: URL, target: PartFile, offset: int, transport: Transport
) -> tuple[int, int | None]:
    """What the answer holds: (where its bytes start, the file's total size if known)."""
    await body.refuse_message(str(url.with_query(None)), transport.timeouts.read, target.dest)
    if body.status == 206:
        content_range = body.headers.get("Content-Range") or ""
        start = content_range.removeprefix("bytes ").split("-", 1)[0]
        if not start.isdigit() or int(start) != offset:
            raise _Restart  # not the range we asked for
        return offset, _total_from_content_range(content_range)
    if offset:
        log.info("download %s: the server sent the whole file; starting over", target.dest)
    return 0, body.content_length  # a 200: the whole file, from the start


async def _receive(
    body: Body, url: URL, target: PartFile, offset: int, total: int | None, transport: Transport
) -> tuple[int, Any]:
    """Stream the body into the ``.part`` from ``offset``; (bytes now in it, the hasher).

    What arrived is in the ``.part`` however this ends (a dropped connection, a stall, a
    cancellation): a resume continues from there.
    """
    hasher = None
    if target.sha256 is not None:
        hasher = (
            await anyio.to_thread.run_sync(target.hash_prefix, offset)
            if offset
            else hashlib.sha256()
        )
    # Two blocks may wait for the disk; beyond that, reading pauses (and memory stays flat).
    writer = PartWriter(target.part, offset, hasher, max_pending=2 * body.block_size)
    try:
        await anyio.to_thread.run_sync(writer.open)
    except OSError as exc:
        raise target.disk_error(exc) from exc
    target.save_validator(body.headers.get("ETag") or body.headers.get("Last-Modified"))
    failure: list[BaseException] = []
    reported = offset

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
            if transport.timeouts.read is not None:
                tg.start_soon(watch_for_stalls, transport.timeouts.read)
            block: list[bytes] | None = None
            try:
                # The network fills the next block while the writer thread writes this one.
                while (block := await body.next_block()) is not None:
                    await writer.put(block)
                    block = None
                    # Neither call need wait when the data is there: let a cancellation in.
                    await anyio.lowlevel.checkpoint()
                    if offset + writer.written != reported:
                        reported = offset + writer.written
                        target.report(reported, total)
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
            await anyio.to_thread.run_sync(writer.close, target.fsync)
    if writer.error is not None:
        raise target.disk_error(writer.error) from writer.error
    if failure:
        if body.encoded:  # its bytes cannot be continued with a Range: start over
            await anyio.to_thread.run_sync(target.discard)
        raise failure[0]
    done = offset + writer.written
    if done != reported:
        target.report(done, total)
    return done, hasher


async def _verify_and_finish(target: PartFile, size: int, total: int | None, hasher: Any) -> None:
    """Check the size and checksum; only then move the ``.part`` into place."""
    if total is not None and size != total:
        if size > total:
            await anyio.to_thread.run_sync(target.discard)
        raise APIConnectionError(f"the body ended at {size} of {total} bytes")
    if target.sha256 is not None:
        if hasher is not None:
            ok = hasher.hexdigest() == target.sha256.lower()
        else:
            ok = await anyio.to_thread.run_sync(sha256_matches, target.part, target.sha256)
        if not ok:
            await anyio.to_thread.run_sync(target.discard)
            raise DownloadError(
                f"SHA-256 mismatch downloading {target.dest}: the file was discarded",
                path=target.dest,
            )
    try:
        await anyio.to_thread.run_sync(target.finish)
    except OSError as exc:
        raise target.disk_error(exc) from exc
