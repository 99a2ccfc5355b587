"""Downloads against the emulator: resume, atomicity, verification, credentials, bulk."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import select
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aio88 import Client, DownloadError, NotFoundError, Schedule, Status
from aio88._download import file_name_for
from aio88._partfile import PartFile
from aio88.testing import Emulator
from aio88.testing.pytest_plugin import FAST_RETRY

pytestmark = pytest.mark.aio88_emulator(duration=None)

FAST = Schedule.fixed(0.02)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def range_requests(emu: Emulator) -> list[str | None]:
    return [r.headers.get("range") for r in emu.requests if r.path.endswith((".mp4", "/content"))]


async def test_download_a_task(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A finished task downloads to dest, exact, with no .part left."""
    task = await aio88_client.videos.retrieve(aio88_emulator.add_task(status="succeeded"))
    dest = tmp_path / "fox.mp4"
    seen: list[tuple[int, int | None]] = []
    path = await aio88_client.download(task, dest, on_progress=lambda d, t: seen.append((d, t)))
    assert path == dest
    assert sha256_of(dest) == aio88_emulator.content_sha256
    assert not (tmp_path / "fox.mp4.part").exists()
    assert seen[-1] == (aio88_emulator.content_length, aio88_emulator.content_length)


@pytest.mark.aio88_emulator(duration=None, content_size=3 * 2**20 + 12345)
async def test_truncated_body_is_resumed(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A body cut mid-way is resumed with Range from what reached the .part; the result is
    exact; dest never holds a partial file. (What aiohttp still held when the connection
    broke is fetched again: on a loaded machine that may be all of it, so the resume may
    start from zero.)"""
    task_id = aio88_emulator.add_task(status="succeeded")
    dest = tmp_path / "v.mp4"
    aio88_emulator.inject("truncate", path="/v1/videos/", times=2)

    def progress(done: int, total: int | None) -> None:
        assert not dest.exists()

    await aio88_client.videos.download(task_id, dest, on_progress=progress)
    assert sha256_of(dest) == aio88_emulator.content_sha256
    assert not dest.with_name("v.mp4.part").exists()
    ranges = range_requests(aio88_emulator)
    assert ranges[0] is None and len(ranges) == 3
    assert all(r is None or r.startswith("bytes=") for r in ranges[1:])
    statuses = [r.status for r in aio88_emulator.requests if r.path.endswith("/content")]
    assert statuses[-1] == (206 if ranges[-1] else 200)


@pytest.mark.aio88_emulator(duration=None, content_size=2**20 + 7, honor_range=False)
async def test_server_ignoring_range_still_gives_an_exact_file(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A 200 to a range request restarts the .part from zero, also when cut again."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("truncate", path="/v1/videos/")
    dest = tmp_path / "v.mp4"
    dest.with_name("v.mp4.part").write_bytes(b"left by an earlier try" * 100)
    await aio88_client.videos.download(task_id, dest)
    assert sha256_of(dest) == aio88_emulator.content_sha256
    first, second = aio88_emulator.requests
    assert first.fault == "truncate" and first.headers["range"] == "bytes=2200-"
    assert second.status == 200


@pytest.mark.aio88_emulator(duration=None, dialect="newapi")
async def test_redirect_to_second_origin_carries_no_credentials(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """newapi's 307 to the media origin works, and that origin never sees the key."""
    task_id = aio88_emulator.add_task(status="succeeded")
    await aio88_client.videos.download(task_id, tmp_path / "a.mp4")
    task = await aio88_client.videos.retrieve(task_id)
    await aio88_client.download(task, tmp_path / "b.mp4")  # follows task.url directly
    media = [r for r in aio88_emulator.requests if r.origin == "media"]
    assert len(media) == 2 and all(r.status == 200 for r in media)
    assert all(r.authorization is None for r in media)
    assert sha256_of(tmp_path / "a.mp4") == sha256_of(tmp_path / "b.mp4")


BIG = 64 * 2**20


@pytest.fixture
def emulator_process() -> Iterator[str]:
    """An emulator in its own process serving BIG-byte files; yields its base URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aio88.testing",
            "--port",
            "0",
            "--duration",
            "0.01",
            "0.01",
            "--content-size",
            str(BIG),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # A fixture is not under the per-test timeout: the start is bounded here.
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the emulator printed nothing within 10 s"
        yield proc.stdout.readline().split(" at ")[1].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_memory_stays_flat(tmp_path: Path, emulator_process: str) -> None:
    """Downloading 64 MiB peaks at a few MiB of the client's Python memory (the emulator
    runs in its own process here, so that only the client is measured)."""
    size = BIG
    async with Client("sk-test", base_url=emulator_process) as client:
        video = await client.videos.create(prompt="big")
        video = await client.videos.wait(video.id, schedule=FAST)
        tracemalloc.start()
        try:
            await client.videos.download(video.id, tmp_path / "big.mp4")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (tmp_path / "big.mp4").stat().st_size == size
    # Three 1 MiB buffers (being filled, waiting, being written) and small change.
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.aio88_emulator(duration=None, content_size=32 * 2**20)
async def test_cancelled_download_resumes(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """Cancelling mid-way leaves only the .part; the next call resumes it with Range."""
    task_id = aio88_emulator.add_task(status="succeeded")
    dest = tmp_path / "v.mp4"
    part = tmp_path / "v.mp4.part"
    with anyio.CancelScope() as scope:

        def progress(done: int, total: int | None) -> None:
            if done >= 2 * 2**20:
                scope.cancel()

        await aio88_client.videos.download(task_id, dest, on_progress=progress)
    assert scope.cancelled_caught
    assert not dest.exists()
    assert part.exists() and 0 < part.stat().st_size < 32 * 2**20
    kept = part.stat().st_size
    await aio88_client.videos.download(task_id, dest)
    assert sha256_of(dest) == aio88_emulator.content_sha256
    assert range_requests(aio88_emulator)[-1] == f"bytes={kept}-"
    assert aio88_emulator.requests[-1].headers.get("if-range") == aio88_emulator.etag


async def test_part_already_complete_is_finished_after_416(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A .part holding the whole file (crash before the rename) gets a 416 and is finished."""
    task_id = aio88_emulator.add_task(status="succeeded")
    dest = tmp_path / "v.mp4"
    await aio88_client.videos.download(task_id, tmp_path / "ref.mp4")
    (tmp_path / "v.mp4.part").write_bytes((tmp_path / "ref.mp4").read_bytes())
    await aio88_client.videos.download(task_id, dest, sha256=aio88_emulator.content_sha256)
    assert sha256_of(dest) == aio88_emulator.content_sha256
    assert aio88_emulator.requests[-1].status == 416


async def test_oversized_part_starts_over(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A .part longer than the file is not the file: discard it and fetch again."""
    task_id = aio88_emulator.add_task(status="succeeded")
    (tmp_path / "v.mp4.part").write_bytes(b"x" * (aio88_emulator.content_length + 10))
    await aio88_client.videos.download(task_id, tmp_path / "v.mp4")
    assert sha256_of(tmp_path / "v.mp4") == aio88_emulator.content_sha256


async def test_existing_dest_is_not_fetched_again(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """An existing dest is a finished download: no request; sha256 proves it; overwrite
    fetches again."""
    task_id = aio88_emulator.add_task(status="succeeded")
    dest = tmp_path / "v.mp4"
    await aio88_client.videos.download(task_id, dest)
    requests = len(aio88_emulator.requests)
    await aio88_client.videos.download(task_id, dest, sha256=aio88_emulator.content_sha256)
    assert len(aio88_emulator.requests) == requests
    dest.write_bytes(b"something else")
    with pytest.raises(DownloadError, match="overwrite=True"):
        await aio88_client.videos.download(task_id, dest, sha256=aio88_emulator.content_sha256)
    await aio88_client.videos.download(task_id, dest, overwrite=True)
    assert sha256_of(dest) == aio88_emulator.content_sha256


async def test_checksum_mismatch_discards(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A wrong sha256 raises and leaves neither dest nor .part."""
    task_id = aio88_emulator.add_task(status="succeeded")
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        await aio88_client.videos.download(task_id, tmp_path / "v.mp4", sha256="0" * 64)
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "v.mp4.part").exists()


@pytest.mark.parametrize("dialect", ["docs", "newapi"])
async def test_unfinished_task_is_a_download_error(tmp_path: Path, dialect: str) -> None:
    """The content endpoint's JSON answer for an unfinished task is a DownloadError
    carrying the server's message; nothing is written."""
    async with Emulator(duration=None, dialect=dialect) as emu:  # type: ignore[arg-type]
        task_id = emu.add_task()
        async with Client("sk-test", base_url=emu.base_url) as client:
            with pytest.raises(DownloadError) as caught:
                await client.videos.download(task_id, tmp_path / "v.mp4")
    message = "not completed yet" if dialect == "docs" else "Task not found"
    assert message in str(caught.value)
    assert caught.value.status_code in (400, 404)
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "v.mp4.part").exists()


async def test_expired_vendor_url_falls_back_to_the_api(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A task's own URL answering 403 (expired) is retried via /v1/videos/{id}/content."""
    task = await aio88_client.videos.retrieve(aio88_emulator.add_task(status="succeeded"))
    aio88_emulator.expired.add(task.id)
    await aio88_client.download(task, tmp_path / "v.mp4")
    assert sha256_of(tmp_path / "v.mp4") == aio88_emulator.content_sha256
    statuses = [(r.origin, r.status) for r in aio88_emulator.requests[1:]]
    assert statuses == [("media", 403), ("api", 200)]


async def test_plain_url_and_data_uri(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """An absolute URL downloads without credentials; a data: URI is decoded."""
    task_id = aio88_emulator.add_task(status="succeeded")
    await aio88_client.download(
        f"{aio88_emulator.media_url}/media/{task_id}.mp4", tmp_path / "u.mp4"
    )
    assert sha256_of(tmp_path / "u.mp4") == aio88_emulator.content_sha256
    payload = b"\x00\x00\x00\x18ftypmp42 tiny video"
    uri = "data:video/mp4;base64," + base64.b64encode(payload).decode()
    seen: list[int] = []
    await aio88_client.download(uri, tmp_path / "d.mp4", on_progress=lambda d, t: seen.append(d))
    assert (tmp_path / "d.mp4").read_bytes() == payload and seen == [len(payload)]
    with pytest.raises(DownloadError, match="base64"):
        await aio88_client.download("data:video/mp4;base64,@@@", tmp_path / "e.mp4")


async def test_bad_destinations(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A directory as dest, or a folder that cannot be made (a file in its way): clear
    errors, nothing sent."""
    task_id = aio88_emulator.add_task(status="succeeded")
    with pytest.raises(DownloadError, match="is a directory"):
        await aio88_client.videos.download(task_id, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DownloadError, match="cannot create the folder"):
        await aio88_client.videos.download(task_id, tmp_path / "file" / "sub" / "v.mp4")
    with pytest.raises(TypeError, match="download source"):
        await aio88_client.download(42, tmp_path / "v.mp4")  # type: ignore[arg-type]
    assert aio88_emulator.requests == []


def test_disk_errors_say_what_to_do(tmp_path: Path) -> None:
    """No space, no permission: the message names the problem and that the .part is kept.
    (As root, permission cannot be provoked for real; the mapping is tested directly.)"""
    part = tmp_path / "v.mp4.part"
    part.write_bytes(b"x")
    full = PartFile(tmp_path / "v.mp4").disk_error(OSError(errno.ENOSPC, "No space left on device"))
    assert "no space left" in str(full) and ".part" in str(full)
    denied = PartFile(tmp_path / "v.mp4").disk_error(PermissionError(errno.EACCES, "denied"))
    assert "no permission" in str(denied)
    other = PartFile(tmp_path / "v.mp4").disk_error(OSError(errno.EIO, "I/O error"))
    assert "I/O error" in str(other)


async def test_failed_task_has_nothing_to_download(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """Downloading a failed task says so at once."""
    task = await aio88_client.videos.retrieve(aio88_emulator.add_task(status="failed"))
    with pytest.raises(DownloadError, match="failed"):
        await aio88_client.download(task, tmp_path / "v.mp4")


def test_file_names() -> None:
    """<id>.<format or mp4>, refusing ids that could leave the folder."""
    assert file_name_for("task_1", None) == "task_1.mp4"
    assert file_name_for("task_1", "MOV") == "task_1.mov"
    assert file_name_for("task_1", "../x") == "task_1.mp4"
    for bad in ("..", "../etc", "/abs", "a\x00b", "a/b"):
        with pytest.raises(ValueError):
            file_name_for(bad, None)


@pytest.mark.slow
async def test_watch_downloads_two_hundred(tmp_path: Path) -> None:
    """A watch of 200 tasks with download_dir: 200 outcomes, 200 exact files."""
    async with Emulator(duration=(0.05, 0.3), failure_rate=0.0, seed=4) as emu:
        ids = [emu.add_task("video" if n % 2 else "generation") for n in range(200)]
        async with Client("sk-test", base_url=emu.base_url, retry=FAST_RETRY) as client:
            async with client.watch(ids, schedule=FAST, download_dir=tmp_path / "out") as outcomes:
                results = [o async for o in outcomes]
    assert len(results) == 200 and all(o.ok for o in results)
    assert sorted(o.id for o in results) == sorted(ids)
    for outcome in results:
        assert outcome.path == tmp_path / "out" / f"{outcome.id}.mp4"
        assert sha256_of(outcome.path) == emu.content_sha256
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{i}.mp4" for i in ids)


@pytest.mark.aio88_emulator(duration=None, content_size=16 * 2**20)
async def test_watch_downloads_soonest_expiry_first(
    aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """With one download at a time, queued videos are fetched soonest-expiring first."""
    ids = [aio88_emulator.add_task(status="succeeded") for _ in range(5)]
    for n, task_id in enumerate(ids):  # expiry order: ids[4], ids[3], ... ids[0]
        aio88_emulator.tasks[task_id].created = -100.0 * n
    async with Client("sk-test", base_url=aio88_emulator.base_url) as client:
        async with client.watch(
            ids, schedule=FAST, download_dir=tmp_path, download_workers=1
        ) as outcomes:
            results = [o async for o in outcomes]
    assert all(o.ok for o in results)
    fetched = [
        r.path.rsplit("/", 1)[-1].split(".")[0]
        for r in aio88_emulator.requests
        if r.origin == "media"
    ]
    queued = fetched[1:]  # the first started before the others were known
    expiry = {task_id: aio88_emulator.tasks[task_id].created for task_id in ids}
    assert queued == sorted(queued, key=expiry.__getitem__)


async def test_watch_reports_download_failures(tmp_path: Path) -> None:
    """A download that fails is that task's Outcome error; the others arrive."""
    async with Emulator(duration=None) as emu:
        good, gone = emu.add_task(status="succeeded"), emu.add_task(status="succeeded")
        emu.expired.add(gone)
        emu.inject("500", path=f"/v1/videos/{gone}/content", times=10)
        async with Client("sk-test", base_url=emu.base_url, retry=FAST_RETRY) as client:
            async with client.watch([good, gone], schedule=FAST, download_dir=tmp_path) as outcomes:
                results = {o.id: o for o in [o async for o in outcomes]}
    assert results[good].ok and results[good].path is not None
    lost = results[gone]
    assert not lost.ok and lost.path is None
    assert lost.task is not None and lost.task.status is Status.SUCCEEDED
    assert lost.error is not None


async def test_unusable_download_dir(aio88_client: Client, tmp_path: Path) -> None:
    """A download_dir that cannot be created fails before anything is polled."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DownloadError, match="download_dir"):
        async with aio88_client.watch(["task_x"], download_dir=blocker / "sub"):
            pass  # pragma: no cover


async def test_content_of_unknown_video(aio88_client: Client) -> None:
    """The raw content stream still raises the API's NotFoundError."""
    with pytest.raises(NotFoundError):
        async with aio88_client.videos.content("task_missing"):
            pass  # pragma: no cover


@pytest.mark.aio88_emulator(duration=None, content_size=2 * 2**20 + 99)
async def test_resume_with_checksum_and_fsync(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A resumed download hashes the bytes already on disk; fsync=True flushes to disk."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("truncate", path="/v1/videos/")
    dest = tmp_path / "v.mp4"
    await aio88_client.videos.download(
        task_id, dest, sha256=aio88_emulator.content_sha256, fsync=True
    )
    assert sha256_of(dest) == aio88_emulator.content_sha256
    assert range_requests(aio88_emulator)[1] is not None


async def test_resume_false_starts_over(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """resume=False discards a .part instead of continuing it."""
    task_id = aio88_emulator.add_task(status="succeeded")
    (tmp_path / "v.mp4.part").write_bytes(b"stale bytes")
    await aio88_client.videos.download(task_id, tmp_path / "v.mp4", resume=False)
    assert sha256_of(tmp_path / "v.mp4") == aio88_emulator.content_sha256
    assert range_requests(aio88_emulator) == [None]


async def test_gives_up_after_the_retry_attempts(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """A body cut every time ends in a DownloadError that says how to resume; the .part stays."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("truncate", path="/v1/videos/", times=50)
    with pytest.raises(DownloadError, match="call download again to resume"):
        await aio88_client.videos.download(task_id, tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4.part").exists() and not (tmp_path / "v.mp4").exists()


async def test_task_sources(aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path) -> None:
    """A task without a URL goes to the content endpoint; one whose URL is a data: URI
    (88API's result_url can be) is decoded; a plain data: URI and a checksum too."""
    from aio88._models import decode_generation, decode_video

    task_id = aio88_emulator.add_task(status="succeeded")
    bare = decode_video(b'{"id": "%s", "status": "completed"}' % task_id.encode())
    await aio88_client.download(bare, tmp_path / "a.mp4")
    assert sha256_of(tmp_path / "a.mp4") == aio88_emulator.content_sha256
    payload = base64.b64encode(b"tiny").decode()
    inline = decode_generation(
        b'{"task_id": "t", "status": "SUCCESS", "result_url": "data:video/mp4;base64,%s"}'
        % payload.encode()
    )
    await aio88_client.download(inline, tmp_path / "b.mp4")
    assert (tmp_path / "b.mp4").read_bytes() == b"tiny"
    await aio88_client.download("data:text/plain,hello", tmp_path / "c.txt")
    assert (tmp_path / "c.txt").read_text() == "hello"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        await aio88_client.download("data:text/plain,x", tmp_path / "d.txt", sha256="0" * 64)


async def test_stalled_body_is_detected_and_resumed(tmp_path: Path) -> None:
    """A body that stops flowing trips the read timeout and the download resumes from
    what it has."""
    from aiohttp import web

    from aio88 import RetryPolicy, Timeouts

    data = bytes(range(256)) * 4096  # 1 MiB
    calls: list[str | None] = []

    async def content(request: web.Request) -> web.StreamResponse:
        calls.append(request.headers.get("Range"))
        start = int(request.headers["Range"][6:-1]) if "Range" in request.headers else 0
        response = web.StreamResponse(status=206 if start else 200)
        response.content_type = "video/mp4"
        response.content_length = len(data) - start
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        if not start:
            await response.write(data[: len(data) // 2])
            await asyncio.sleep(3)  # stall
        await response.write(data[start:])
        return response

    app = web.Application()
    app.router.add_get("/v1/videos/{id}/content", content)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        async with Client(
            "k",
            base_url=f"http://{host}:{port}",
            timeouts=Timeouts(read=0.3),
            retry=RetryPolicy(backoff_initial=0.01),
        ) as client:
            await client.videos.download("task_x", tmp_path / "v.mp4")
    finally:
        await runner.cleanup()
    assert (tmp_path / "v.mp4").read_bytes() == data
    assert calls[0] is None and calls[1] == f"bytes={len(data) // 2}-"


def test_more_disk_errors(tmp_path: Path) -> None:
    """A directory where the file goes, and a missing folder, are named as such."""
    assert "is a directory" in str(
        PartFile(tmp_path).disk_error(IsADirectoryError(errno.EISDIR, "x"))
    )
    assert "does not exist" in str(
        PartFile(tmp_path).disk_error(FileNotFoundError(errno.ENOENT, "x"))
    )


async def test_download_workers_must_be_positive(aio88_client: Client, tmp_path: Path) -> None:
    """A watch's number of download workers must be at least 1."""
    with pytest.raises(ValueError, match="download_workers must be at least 1"):
        async with aio88_client.watch([], download_dir=tmp_path, download_workers=0):
            pass  # pragma: no cover


@pytest.mark.aio88_emulator(duration=None, content_size=4 * 2**20)
async def test_progress_callback_error_is_raised_as_itself(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """An exception from on_progress stops the download and reaches the caller as itself
    (not wrapped in an ExceptionGroup); what arrived stays in the .part."""
    task_id = aio88_emulator.add_task(status="succeeded")

    def progress(done: int, total: int | None) -> None:
        raise LookupError("the caller's own bug")

    with pytest.raises(LookupError, match="the caller's own bug"):
        await aio88_client.videos.download(task_id, tmp_path / "v.mp4", on_progress=progress)
    assert not (tmp_path / "v.mp4").exists() and (tmp_path / "v.mp4.part").stat().st_size > 0


async def test_two_downloads_of_one_file_write_it_once(
    aio88_client: Client, aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """Two downloads to one path at once (two workers sharing a folder, here two clients):
    one writes the ``.part`` (``<dest>.lock``), the other finds the file finished."""
    task_id = aio88_emulator.add_task(status="succeeded")
    dest = tmp_path / "v.mp4"
    async with Client(aio88_emulator.api_key, base_url=aio88_emulator.base_url) as other:
        results: list[Path] = []

        async def fetch(client: Client) -> None:
            results.append(await client.videos.download(task_id, dest))

        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, aio88_client)
            tg.start_soon(fetch, other)
    assert results == [dest, dest]
    assert sha256_of(dest) == aio88_emulator.content_sha256
    assert len([r for r in range_requests(aio88_emulator) if r is None]) == 1  # one whole GET
    assert not (tmp_path / "v.mp4.part").exists()
    assert not (tmp_path / "v.mp4.lock").exists()
