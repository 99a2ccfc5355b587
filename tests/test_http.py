"""The request path's corners: exception translation, poll hints, streams that retry."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from multidict import CIMultiDict

from aio88 import APIConnectionError, APITimeoutError, Client, NotFoundError
from aio88._http import translate
from aio88._resources import _sniff_image_type, poll_hint
from aio88.testing import Emulator
from aio88.testing.pytest_plugin import FAST_RETRY

pytestmark = pytest.mark.aio88_emulator(duration=None)


def _connector_error() -> aiohttp.ClientConnectorError:
    key = type("Key", (), {"host": "h", "port": 1, "ssl": False})()
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))  # type: ignore[arg-type]


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
