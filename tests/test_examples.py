"""The FastAPI example in docs/examples, served by uvicorn, against the emulator."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
import uvicorn

from aio88.testing import Emulator

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "fastapi_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def service(
    aio88_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, ModuleType]]:
    """The example app on a free loopback port, its Client pointed at the emulator."""
    monkeypatch.setenv("AIO88_API_KEY", aio88_emulator.api_key)
    monkeypatch.setenv("AIO88_BASE_URL", aio88_emulator.base_url)
    module = load_example()
    config = uvicorn.Config(module.app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, no event to wait on
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", module
    finally:
        server.should_exit = True
        await task


@pytest.mark.aio88_emulator(duration=None, dialect="newapi")
async def test_the_whole_path(service: tuple[str, ModuleType], aio88_emulator: Emulator) -> None:
    """Create a job, let 20 callers wait on it at once (one poll stream), fetch the video."""
    base, _ = service
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/jobs", json={"prompt": "a red fox"}) as resp:
            assert resp.status == 201
            job_id = (await resp.json())["id"]
        assert aio88_emulator.tasks[job_id].request["prompt"] == "a red fox"

        async with http.get(f"{base}/jobs/{job_id}/video") as resp:
            assert resp.status == 409  # not finished yet

        async def wait() -> dict[str, object]:
            async with http.get(f"{base}/jobs/{job_id}", params={"timeout": "20"}) as resp:
                assert resp.status == 200
                return await resp.json()  # type: ignore[no-any-return]

        waiters = [asyncio.create_task(wait()) for _ in range(20)]
        await asyncio.sleep(0.5)
        aio88_emulator.complete(job_id)
        results = await asyncio.gather(*waiters)
        assert all(r["status"] == "succeeded" for r in results)
        polls = aio88_emulator.count("GET", f"/v1/videos/{job_id}")
        assert polls < 20  # 20 waiters, one shared stream of polls

        async with http.get(f"{base}/jobs/{job_id}/video") as resp:
            assert resp.status == 200 and resp.content_type == "video/mp4"
            assert len(await resp.read()) == aio88_emulator.content_length


@pytest.mark.aio88_emulator(duration=None)
async def test_errors_map_to_http(
    service: tuple[str, ModuleType], aio88_emulator: Emulator
) -> None:
    """Failed -> 422, still running at the timeout -> 504, unknown -> 404, bad id -> 400."""
    base, _ = service
    failed = aio88_emulator.add_task(status="failed")
    running = aio88_emulator.add_task()
    async with aiohttp.ClientSession() as http:
        for job, expected in ((failed, 422), ("task_missing", 404), ("a%20b", 400)):
            async with http.get(f"{base}/jobs/{job}") as resp:
                assert resp.status == expected, job
        async with http.get(f"{base}/jobs/{running}", params={"timeout": "0.2"}) as resp:
            assert resp.status == 504


@pytest.mark.aio88_emulator(duration=None)
async def test_a_caller_that_leaves_stops_the_polling(
    service: tuple[str, ModuleType], aio88_emulator: Emulator
) -> None:
    """When the only waiter's HTTP connection goes away, the app stops polling that job."""
    base, module = service
    job = aio88_emulator.add_task()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(asyncio.TimeoutError):
            async with http.get(f"{base}/jobs/{job}", timeout=aiohttp.ClientTimeout(total=0.5)):
                pass  # pragma: no cover
    await asyncio.sleep(1.5)  # the app notices the disconnect within half a second
    polls = aio88_emulator.count("GET", f"/v1/videos/{job}")
    await asyncio.sleep(6)  # past the schedule's next poll
    assert aio88_emulator.count("GET", f"/v1/videos/{job}") == polls
    assert module.app.state.poller.stats().tracked == 0
