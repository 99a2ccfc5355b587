"""The FastAPI example in docs/examples, served by uvicorn, against the emulator.

The emulator sends a poll hint (``openai-poll-after-ms``) that the app's poller, on its
default schedule, follows down to the schedule's floor (1 s): the example runs as printed,
without waiting out the docs' 5-second tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType

import aiohttp
import anyio
import pytest
import uvicorn

from aio88.testing import Emulator

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "fastapi_app.py"

if not EXAMPLE.exists():  # an sdist without docs/
    pytest.skip(f"needs the example app ({EXAMPLE})", allow_module_level=True)

#: The emulator's poll hint, in ms: below the schedule's floor, so the floor applies.
POLL_HINT_MS = 50


class QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the test process keeps its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def until(predicate: Callable[[], bool], guard: float = 5.0) -> None:
    """Wait for state that the app changes on its own (no event to wait on); a hang fails."""
    with anyio.fail_after(guard):
        while not predicate():  # noqa: ASYNC110 - the state lives in the app and the emulator
            await asyncio.sleep(0.01)


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
    server = QuietServer(config)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done())  # uvicorn has a flag, no event
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", module
    finally:
        server.should_exit = True
        with anyio.fail_after(10):  # fixtures are not under the per-test timeout
            await task


@pytest.mark.aio88_emulator(duration=None, dialect="newapi", poll_after_ms=POLL_HINT_MS)
@pytest.mark.slow
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


@pytest.mark.aio88_emulator(duration=None, poll_after_ms=POLL_HINT_MS)
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


@pytest.mark.slow
@pytest.mark.aio88_emulator(duration=None, poll_after_ms=POLL_HINT_MS)
async def test_a_caller_that_leaves_stops_the_polling(
    service: tuple[str, ModuleType], aio88_emulator: Emulator
) -> None:
    """When the only waiter's HTTP connection goes away, the app stops polling that job.

    No wall-clock bound: once the app has forgotten the job, a second job is waited for,
    and polled twice. Its second poll is due later than the first job's next poll would
    have been (the poller takes polls in due order), so a first job still being polled
    would show up in the server's log before it.
    """
    base, module = service
    poller = module.app.state.poller
    left, witness = aio88_emulator.add_task(), aio88_emulator.add_task()

    def polls_of(job: str) -> int:
        return aio88_emulator.count("GET", f"/v1/videos/{job}")

    async with aiohttp.ClientSession() as http:

        async def wait_for(job: str) -> dict[str, object]:
            async with http.get(f"{base}/jobs/{job}", params={"timeout": "20"}) as resp:
                assert resp.status == 200
                return await resp.json()  # type: ignore[no-any-return]

        caller = asyncio.create_task(wait_for(left))
        await until(lambda: polls_of(left) >= 1)  # the app is waiting on it
        caller.cancel()  # the caller goes away: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        # The app noticed, and no poll of the job is under way.
        await until(lambda: poller.stats().tracked == 0 and poller.stats().in_flight == 0)
        polls = polls_of(left)

        waiter = asyncio.create_task(wait_for(witness))
        await until(lambda: polls_of(witness) >= 1)
        aio88_emulator.complete(witness)
        with anyio.fail_after(5):
            assert (await waiter)["status"] == "succeeded"
    assert polls_of(witness) >= 2
    assert polls_of(left) == polls
    assert poller.stats().tracked == 0
