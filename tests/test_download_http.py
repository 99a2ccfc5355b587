"""Downloads against raw loopback servers: what the emulator and nginx never send.

The emulator and nginx always frame a video with ``Content-Length``; these servers send a
body ended by the close, chunks, gzip, broken or missing heads, redirect loops and TLS,
and the disk is failed for real, so that every way a download can go is taken once.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from conftest import Answer

from aio88 import Client, DownloadError, Timeouts
from aio88.testing import Emulator
from aio88.testing.pytest_plugin import FAST_RETRY

#: Three and a bit blocks' worth, so that several blocks go to the writer thread.
DATA = bytes(range(256)) * 4096 * 3 + b"tail"

StartServer = Callable[[Answer], "asyncio.Future[int]"]


def video(body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def client_for(port: int, **kwargs: object) -> Client:
    return Client("k", base_url=f"http://127.0.0.1:{port}", retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


async def test_request_and_exact_file(raw_server: StartServer, tmp_path: Path) -> None:
    """One GET, credentials to the API origin, the file exact, progress in order."""
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request)
        return video(DATA)

    port = await raw_server(answer)
    progress: list[int] = []
    async with client_for(port) as client:
        await client.download(
            "task_1", tmp_path / "v.mp4", on_progress=lambda d, t: progress.append(d)
        )
    assert (tmp_path / "v.mp4").read_bytes() == DATA
    assert seen[0].startswith(b"GET /v1/videos/task_1/content HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in seen[0]
    assert b"Authorization: Bearer k\r\n" in seen[0]
    assert progress == sorted(progress) and progress[-1] == len(DATA)


async def test_body_ended_by_the_close(raw_server: StartServer, tmp_path: Path) -> None:
    """No Content-Length: the body is everything until the server closes."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\n"
    port = await raw_server(lambda request: head + DATA)
    async with client_for(port) as client:
        await client.download("task_1", tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == DATA


def chunked(body: bytes) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536])
        for i in range(0, len(body), 65536)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["chunked", "gzip"])
async def test_chunked_or_encoded_video(
    raw_server: StartServer, tmp_path: Path, framing: str
) -> None:
    """A chunked or gzip-encoded video gives the exact file, with one request."""
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\n"
        if framing == "chunked":
            return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(DATA)
        packed = gzip.compress(DATA)
        return head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed

    port = await raw_server(answer)
    async with client_for(port) as client:
        await client.download("task_1", tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == DATA
    assert len(seen) == 1


async def test_chunked_error_body_is_the_message(raw_server: StartServer, tmp_path: Path) -> None:
    """An error answer in chunks (as proxies send them) still gives the server's words."""
    message = b'{"error":{"message":"task is not finished yet","code":"task_not_finished"}}'
    reply = (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(message)
    )
    port = await raw_server(lambda request: reply)
    async with client_for(port) as client:
        with pytest.raises(DownloadError, match="task is not finished yet") as caught:
            await client.download("task_1", tmp_path / "v.mp4")
    assert caught.value.status_code == 404
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "v.mp4.part").exists()


async def test_long_error_body_is_cut(raw_server: StartServer, tmp_path: Path) -> None:
    """A huge error page is not read whole: its start is enough for the message."""
    page = b"<html>" + b"x" * (3 * 2**20) + b"</html>"
    reply = (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
        % len(page)
    )
    port = await raw_server(lambda request: reply + page)
    async with client_for(port) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(f"http://127.0.0.1:{port}/cdn/v.mp4", tmp_path / "v.mp4")
    assert caught.value.status_code == 403 and len(str(caught.value)) < 70_000


async def test_redirect_loop_is_cut_short(raw_server: StartServer, tmp_path: Path) -> None:
    """A redirect loop ends in a clear error, not forever."""
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request)
        return (
            b"HTTP/1.1 302 Found\r\nLocation: /v1/videos/task_1/content\r\n"
            b"Content-Length: 0\r\n\r\n"
        )

    port = await raw_server(answer)
    async with client_for(port) as client:
        with pytest.raises(DownloadError, match="after 10 redirects"):
            await client.download("task_1", tmp_path / "v.mp4")
    assert len(seen) == 11 * FAST_RETRY.attempts  # each try: the request and 10 redirects


@pytest.mark.parametrize(
    ("reply", "error", "read"),
    [
        (None, "closed the connection", 0.2),
        # Silent: every one of the 4 x 4 tries (the download's, each request's) waits out
        # the read timeout, so it is short here.
        (b"HTTP/1.1 200 OK\r\nX-HANG: 1", "timed out", 0.02),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 70_000 + b"\r\n\r\n", "failed after", 0.2),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 70_000, "failed after", 0.2),
        (b"HTTP/1.1 OK\r\n\r\n", "not valid HTTP", 0.2),
    ],
    ids=["closed", "silent", "huge-head", "endless-head", "bad-status"],
)
async def test_no_usable_answer(
    raw_server: StartServer, tmp_path: Path, reply: bytes | None, error: str, read: float
) -> None:
    """A server that closes, says nothing or sends an endless head: retried, then a clear
    error; nothing at dest."""
    port = await raw_server(lambda request: reply)
    async with client_for(port, timeouts=Timeouts(read=read)) as client:
        with pytest.raises(DownloadError, match=error):
            await client.download("task_1", tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


async def test_download_over_tls(tls_server: StartServer, tmp_path: Path) -> None:
    """A download over TLS (CDNs are https), the certificate trusted through
    SSL_CERT_FILE."""
    port = await tls_server(lambda request: video(DATA))
    # aiohttp reads SSL_CERT_FILE when it is imported; a context made now reads it now.
    context = ssl.create_default_context()
    async with Client("k", base_url=f"https://127.0.0.1:{port}", ssl=context) as client:
        await client.download("task_1", tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == DATA


@pytest.mark.aio88_emulator(duration=None, content_size=3 * 2**20 + 5)
async def test_callers_session_downloads_through_aiohttp(
    aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """With the caller's own session (its proxy, its tracing), downloads use it, and a cut
    body still ends as the exact file."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("truncate", path="/v1/videos/", times=1)
    async with aiohttp.ClientSession() as session:
        async with Client(
            "sk-test", base_url=aio88_emulator.base_url, session=session, retry=FAST_RETRY
        ) as client:
            await client.videos.download(task_id, tmp_path / "v.mp4")
    digest = hashlib.sha256((tmp_path / "v.mp4").read_bytes()).hexdigest()
    assert digest == aio88_emulator.content_sha256
    assert [r.fault for r in aio88_emulator.requests] == ["truncate", None]


DISK_FULL = """
import asyncio, hashlib, resource, signal, sys
from pathlib import Path
from aio88 import Client, DownloadError
from aio88.testing import Emulator

async def main(dest: Path) -> None:
    async with Emulator(duration=None, content_size=8 * 2**20) as emu:
        task_id = emu.add_task(status="succeeded")
        async with Client("sk-test", base_url=emu.base_url) as client:
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, hard))
            try:
                await client.download(task_id, dest)
            except DownloadError as exc:
                print("error:", exc)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            part = dest.with_name(dest.name + ".part")
            print("part:", part.stat().st_size, dest.exists())
            await client.download(task_id, dest)
            print("resumed:", hashlib.sha256(dest.read_bytes()).hexdigest() == emu.content_sha256)

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
asyncio.run(main(Path(sys.argv[1])))
"""


def test_disk_full_mid_body_keeps_the_part(tmp_path: Path) -> None:
    """The disk refuses a write mid-body (a real EFBIG from a file-size limit, in a child
    process): a clear error, the .part keeps what was written, and the next call resumes."""
    out = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tmp_path / "v.mp4")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    error, part, resumed = out.splitlines()
    assert "File too large" in error and "stay in the .part file" in error
    assert part == f"part: {3 * 2**20} False"
    assert resumed == "resumed: True"


async def test_early_hints_then_the_video(raw_server: StartServer, tmp_path: Path) -> None:
    """A 103 before the answer is skipped; the file is exact."""
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    port = await raw_server(lambda request: hints + video(DATA))
    async with client_for(port) as client:
        await client.download("task_1", tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == DATA


async def test_nothing_listening(closed_port: int, tmp_path: Path) -> None:
    """A refused connection is retried, then named, with the host and port."""
    async with client_for(closed_port) as client:
        with pytest.raises(DownloadError, match=f"cannot connect to 127.0.0.1:{closed_port}"):
            await client.download("task_1", tmp_path / "v.mp4")


async def test_stalled_error_body(raw_server: StartServer, tmp_path: Path) -> None:
    """An error whose body stops short: after the read timeout, the error is raised with
    what came."""
    reply = (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
        b'Content-Length: 500\r\n\r\n{"error": {"message": "no such video (HANG'
    )
    port = await raw_server(lambda request: reply)
    async with client_for(port, timeouts=Timeouts(read=0.2)) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download("task_1", tmp_path / "v.mp4")
    assert caught.value.status_code == 404 and "no such video" in str(caught.value)
