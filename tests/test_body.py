"""The download fast path (``aio88._body``) against real loopback servers.

The emulator and nginx always frame a video with ``Content-Length``; these servers send
what they never do (a body ended by the close, chunks, gzip, broken or missing heads,
redirect loops, TLS) and fail the disk for real, so that every way out of the fast path
is taken at least once.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
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

#: Three and a bit buffers' worth, so that buffers are filled, handed over and reused.
DATA = bytes(range(256)) * 4096 * 3 + b"tail"

StartServer = Callable[[Answer], "asyncio.Future[int]"]


def video(body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def client_for(port: int, **kwargs: object) -> Client:
    return Client("k", base_url=f"http://127.0.0.1:{port}", retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


async def test_request_and_exact_file(raw_server: StartServer, tmp_path: Path) -> None:
    """One GET on its own connection, credentials to the API origin, the file exact."""
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
    assert b"Authorization: Bearer k\r\n" in seen[0] and b"Connection: close\r\n" in seen[0]
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
async def test_chunked_or_encoded_video_is_read_by_aiohttp(
    raw_server: StartServer, tmp_path: Path, framing: str
) -> None:
    """What the fast path does not read goes to aiohttp, and still gives the exact file."""
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
    assert len(seen) == 2  # the fast path's answer is dropped at its head; aiohttp asks again
    assert b"Connection: close" not in seen[1]


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
        with pytest.raises(DownloadError, match="more than 10 redirects"):
            await client.download("task_1", tmp_path / "v.mp4")
    assert len(seen) == 11 * FAST_RETRY.attempts


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, "without answering"),
        (b"HANG", "no answer within 0.2s"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 70_000 + b"\r\n\r\n", "failed after"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 70_000, "failed after"),
        (b"HTTP/1.1 OK\r\n\r\n", "failed after"),
    ],
    ids=["closed", "silent", "huge-head", "endless-head", "bad-status"],
)
async def test_no_usable_answer(
    raw_server: StartServer, tmp_path: Path, reply: bytes | None, error: str
) -> None:
    """A server that closes, says nothing or sends an endless head: retried, then a clear
    error; nothing at dest."""
    port = await raw_server(lambda request: reply)
    async with client_for(port, timeouts=Timeouts(read=0.2)) as client:
        with pytest.raises(DownloadError, match=error):
            await client.download("task_1", tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


async def test_download_over_tls(tls_server: StartServer, tmp_path: Path) -> None:
    """The fast path reads a TLS body into its buffers too (CDNs are https), with the
    certificate and hostname checked."""
    port = await tls_server(lambda request: video(DATA))
    async with Client("k", base_url=f"https://127.0.0.1:{port}") as client:
        await client.download("task_1", tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == DATA


@pytest.mark.aio88_emulator(duration=None, content_size=3 * 2**20 + 5)
async def test_callers_session_downloads_through_aiohttp(
    aio88_emulator: Emulator, tmp_path: Path
) -> None:
    """With the caller's own session (its proxy, its tracing), downloads use it, and a cut
    body is still resumed exactly."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("truncate", path="/v1/videos/", times=1)
    async with aiohttp.ClientSession() as session:
        async with Client(
            "sk-test", base_url=aio88_emulator.base_url, session=session, retry=FAST_RETRY
        ) as client:
            await client.videos.download(task_id, tmp_path / "v.mp4")
    digest = hashlib.sha256((tmp_path / "v.mp4").read_bytes()).hexdigest()
    assert digest == aio88_emulator.content_sha256
    ranges = [r.headers.get("range") for r in aio88_emulator.requests]
    assert ranges[0] is None and ranges[1] is not None


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
    """A 103 before the answer is for aiohttp, which skips it; the file is exact."""
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


def test_host_header() -> None:
    """The Host header: the port only when the URL names one; IPv6 literals bracketed."""
    from yarl import URL

    from aio88._body import _host_header

    assert _host_header(URL("https://cdn.example/v.mp4")) == "cdn.example"
    assert _host_header(URL("http://127.0.0.1:8080/v")) == "127.0.0.1:8080"
    assert _host_header(URL("http://[::1]:9000/v")) == "[::1]:9000"


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
