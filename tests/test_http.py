"""The request path's corners: exception translation, poll hints, streams that retry."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from aio88 import APIConnectionError, APITimeoutError, Client, NotFoundError
from aio88._failures import translate
from aio88._fetch import poll_hint
from aio88._proxies import Proxies
from aio88._resources import _sniff_image_type
from aio88.testing import Emulator
from aio88.testing.pytest_plugin import FAST_RETRY

pytestmark = pytest.mark.aio88_emulator(duration=None)


def _connector_error() -> aiohttp.ClientConnectorError:
    key = type("Key", (), {"host": "h", "port": 1, "ssl": False})()
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


@pytest.mark.parametrize(
    ("exc", "cls", "sent", "words"),
    [
        (aiohttp.ConnectionTimeoutError(), APITimeoutError, False, "connecting"),
        (asyncio.TimeoutError(), APITimeoutError, True, "timed out waiting"),
        (aiohttp.ServerTimeoutError(), APITimeoutError, True, "timed out waiting"),
        (_connector_error(), APIConnectionError, False, "cannot connect to h:1"),
        (aiohttp.ServerDisconnectedError(), APIConnectionError, True, "closed the connection"),
        (aiohttp.ClientPayloadError("cut"), APIConnectionError, True, "closed the connection"),
        (aiohttp.ClientOSError(104, "reset"), APIConnectionError, True, "ClientOSError"),
    ],
)
def test_translate(exc: BaseException, cls: type, sent: bool, words: str) -> None:
    """Each aiohttp failure maps to one aio88 error that says whether the request left."""
    error = translate(exc, "GET /v1/videos/x")
    assert type(error) is cls
    assert error.request_sent is sent
    assert words in str(error) and "GET /v1/videos/x" in str(error)


@pytest.mark.parametrize(
    ("headers", "hint"),
    [
        ({"openai-poll-after-ms": "2500"}, 2.5),
        ({"openai-poll-after-ms": "junk"}, None),
        ({"openai-poll-after-ms": "junk", "Retry-After": "4"}, 4.0),
        ({"Retry-After": "7"}, 7.0),
        ({}, None),
    ],
)
def test_poll_hint(headers: dict[str, str], hint: float | None) -> None:
    """openai-poll-after-ms first, then Retry-After on a 200."""
    assert poll_hint(CIMultiDict(headers)) == hint


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("x", b"\xff\xd8\xff\xe0", "image/jpeg"),
        ("x", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        ("a.gif", b"GIF89a", "image/gif"),
        ("blob", b"????", "application/octet-stream"),
    ],
)
def test_reference_image_type_is_sniffed(name: str, data: bytes, expected: str) -> None:
    """The multipart part gets a real image type, from the bytes first."""
    assert _sniff_image_type(name, data) == expected


async def test_content_is_retried_before_the_body(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """A 500 on the content request is retried; the stream then starts normally."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("500", path=f"/v1/videos/{task_id}/content")
    async with aio88_client.videos.content(task_id, variant="video") as body:
        assert len(await body.read()) == aio88_emulator.content_length
        assert body.status == 200
    gets = [r for r in aio88_emulator.requests if r.path.endswith("/content")]
    assert [r.status for r in gets] == [500, 200]
    assert gets[-1].query == {"variant": "video"}


async def test_content_error_status_raises(aio88_client: Client) -> None:
    """An unknown id's content is a NotFoundError after no retry (404 is permanent)."""
    with pytest.raises(NotFoundError):
        async with aio88_client.videos.content("task_missing"):
            pass  # pragma: no cover


async def test_stream_connect_failure(closed_port: int) -> None:
    """Nothing listening: the stream fails with APIConnectionError after its retries."""
    port = closed_port
    async with Client("sk-test", base_url=f"http://127.0.0.1:{port}", retry=FAST_RETRY) as client:
        with pytest.raises(APIConnectionError):
            async with client.videos.content("task_1"):
                pass  # pragma: no cover


def content_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.aio88_emulator(duration=None, content_size=3 * 2**20 + 11)
async def test_cut_stream_is_an_aio88_error(aio88_client: Client, aio88_emulator: Emulator) -> None:
    """A stream cut mid-body raises APIConnectionError (never aiohttp's own error), saying
    how much had arrived and how to continue."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("truncate", path=f"/v1/videos/{task_id}/content")
    received = 0
    with pytest.raises(APIConnectionError, match=r"cut after [0-9,]+ bytes.*resume=True") as caught:
        async with aio88_client.videos.content(task_id) as body:
            async for chunk in body:
                received += len(chunk)
    assert f"after {received:,} bytes" in str(caught.value)
    assert 0 < received < aio88_emulator.content_length


@pytest.mark.aio88_emulator(duration=None, content_size=3 * 2**20 + 11)
async def test_cut_stream_resumes_with_range(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """content(resume=True) continues a cut stream with Range: the same bytes, in order."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("truncate", path=f"/v1/videos/{task_id}/content", times=2)
    async with aio88_client.videos.content(task_id, resume=True) as body:
        data = b"".join([chunk async for chunk in body])
        assert body.received == len(data)
    assert content_sha(data) == aio88_emulator.content_sha256
    gets = [r for r in aio88_emulator.requests if r.path.endswith("/content")]
    ranges = [r.headers.get("range") for r in gets]
    assert ranges[0] is None and all(r is not None for r in ranges[1:]) and len(gets) == 3
    assert gets[1].headers.get("if-range") is not None  # the same file, or a whole new one


@pytest.mark.aio88_emulator(duration=None, content_size=3 * 2**20 + 11, honor_range=False)
async def test_cut_stream_that_cannot_resume_says_so(
    aio88_client: Client, aio88_emulator: Emulator
) -> None:
    """A server that ignores Range cannot continue a stream: a clear error, not wrong bytes."""
    task_id = aio88_emulator.add_task(status="succeeded")
    aio88_emulator.inject("truncate", path=f"/v1/videos/{task_id}/content")
    with pytest.raises(APIConnectionError, match=r"cannot continue it.*HTTP 200"):
        async with aio88_client.videos.content(task_id, resume=True) as body:
            await body.read()


def test_proxies_from_an_environment() -> None:
    """The environment is read once; NO_PROXY, credentials and odd schemes are handled."""
    env = {
        "HTTPS_PROXY": "http://user:p%40ss@proxy.example:3128",
        "http_proxy": "proxy.example:8080",
        "NO_PROXY": "internal.example,127.0.0.1",
        "ALL_PROXY": "socks5://s.example:1080",
    }
    proxies = Proxies(None, env)
    url, headers = proxies.for_url(URL("https://api.example/v1"))
    assert url == URL("http://proxy.example:3128") and headers is not None
    assert base64.b64decode(headers["Proxy-Authorization"][6:]) == b"user:p@ss"
    assert proxies.for_url(URL("http://cdn.example/v.mp4"))[0] == URL("http://proxy.example:8080")
    assert proxies.for_url(URL("https://internal.example/x")) == (None, None)
    assert proxies.for_url(URL("http://127.0.0.1:8080/x")) == (None, None)
    lower_wins = Proxies(None, {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"})
    assert lower_wins.for_url(URL("https://a.example"))[0] == URL("http://lower:2")
    cgi = Proxies(None, {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"})
    assert cgi.for_url(URL("http://a.example")) == (None, None)
    cidr = Proxies(None, {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8, bad/99"})
    assert cidr.for_url(URL("http://10.1.2.3/x")) == (None, None)
    assert cidr.for_url(URL("http://11.0.0.1/x"))[0] == URL("http://p:1")
    assert Proxies(False, env).for_url(URL("https://api.example")) == (None, None)
    assert Proxies(None, {"FTP_PROXY": "http://p:1"}).for_url(URL("https://a.example")) == (
        None,
        None,
    )
    with pytest.raises(ValueError, match="http:// proxy URL"):
        Proxies("ftp://p.example:21")


def test_unusable_environment_proxy_goes_direct(caplog: pytest.LogCaptureFixture) -> None:
    """A socks5:// proxy in the environment (aiohttp speaks HTTP proxies only) is skipped
    with a warning rather than failing every request."""
    proxies = Proxies(None, {"HTTPS_PROXY": "socks5://s.example:1080"})
    with caplog.at_level("WARNING", logger="aio88"):
        assert proxies.for_url(URL("https://api.example")) == (None, None)
    assert "HTTPS_PROXY" in caplog.text and "directly" in caplog.text
