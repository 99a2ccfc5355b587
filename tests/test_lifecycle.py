"""A client's life: used without ``async with``, closed, or refused mid-batch."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from servers import RawRequest, RawServerPool, http_reply, task_json

from aio88 import AuthenticationError, Client, Schedule
from aio88.testing import Emulator
from aio88.testing.pytest_plugin import FAST_RETRY


async def test_first_request_of_an_unentered_client_goes_through_the_proxy(
    raw_servers: RawServerPool,
) -> None:
    """A client never entered opens on its first request, and that request already goes
    through the proxy, with the proxy's credentials for the proxy only."""

    def proxy(request: RawRequest) -> bytes:
        return http_reply(task_json("task_1"), headers=[("Content-Type", "application/json")])

    recorder = await raw_servers.start(proxy)
    client = Client(
        "sk-test",
        base_url="http://api.example:8080",  # never resolved: the proxy answers
        proxy=f"http://user:secret@127.0.0.1:{recorder.port}",
        retry=FAST_RETRY,
    )
    try:
        assert (await client.videos.retrieve("task_1")).id == "task_1"
    finally:
        await client.aclose()
    (first,) = recorder.requests
    assert first.head.startswith(b"GET http://api.example:8080/v1/videos/task_1 HTTP/1.1")
    assert b"Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=" in first.head


async def test_a_closed_client_refuses_clearly(aio88_emulator: Emulator) -> None:
    """wait(), watch() and a poller on a closed client say so, not an ExceptionGroup."""
    client = Client("sk-test", base_url=aio88_emulator.base_url)
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed and cannot be reopened"):
        await client.videos.wait("task_1")
    with pytest.raises(RuntimeError, match="closed and cannot be reopened"):
        async with client.watch(["task_1"]):
            pass  # pragma: no cover
    with pytest.raises(RuntimeError, match="closed and cannot be reopened"):
        async with client.poller():
            pass  # pragma: no cover


async def test_key_refused_while_a_download_runs_ends_the_watch_with_it(
    tmp_path: Path,
) -> None:
    """The key is refused while a watch downloads: the iteration ends with the
    AuthenticationError itself, also when the download finishes afterwards (its outcome has
    nowhere to go; before, it crashed the watch with an ExceptionGroup)."""
    from aiohttp import web

    content_asked, refused, release = anyio.Event(), anyio.Event(), anyio.Event()

    async def poll(request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        if task_id == "done":
            return web.json_response({"id": "done", "status": "completed", "progress": 100})
        if content_asked.is_set():
            refused.set()
            return web.json_response({"error": {"message": "key revoked"}}, status=401)
        return web.json_response({"id": task_id, "status": "in_progress", "progress": 5})

    async def content(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = 2000
        await response.prepare(request)
        await response.write(b"\0" * 1000)
        content_asked.set()
        await release.wait()  # finishes only after the key was refused
        await response.write(b"\0" * 1000)
        return response

    app = web.Application()
    app.router.add_get("/v1/videos/{id}", poll)
    app.router.add_get("/v1/videos/{id}/content", content)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with Client("sk-test", base_url=f"http://{host}:{port}", retry=FAST_RETRY) as client:
            with pytest.raises(AuthenticationError, match="key revoked"):
                async with client.watch(
                    ["done", "running"], schedule=Schedule.fixed(0.02), download_dir=tmp_path
                ) as outcomes:
                    await refused.wait()
                    release.set()
                    await anyio.sleep(0.2)  # the download finishes: its outcome is dropped
                    async for _outcome in outcomes:  # pragma: no cover - none came
                        pass
    finally:
        await runner.cleanup()
    assert (tmp_path / "done.mp4").stat().st_size == 2000  # it did finish, and was kept
