"""The FastAPI example in docs/examples, served by uvicorn, against the emulator; and the
quickstart's demo, as docs/quickstart.md tells it.

The emulator sends a poll hint (``openai-poll-after-ms``) that the app's poller, on its
default schedule, follows down to the schedule's floor (1 s): the example runs as printed,
without waiting out the docs' 5-second tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio
import pytest
import uvicorn

from aio88 import Client, Outcome, RetryPolicy, Video
from aio88._cli._demo import create_one, demo
from aio88._cli._main import build_parser
from aio88._cli._output import Printer
from aio88.testing import Emulator, FaultKind

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


@contextlib.asynccontextmanager
async def serving(app: Callable[..., Any], sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port (or on ``sock``, bound
    already, when the app must know its address as it starts); its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
    await until(lambda: server.started or task.done())  # uvicorn has a flag, no event
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with anyio.fail_after(10):  # fixtures are not under the per-test timeout
            await task


def point_at(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the example's ``Client()`` (configured from the environment) at ``emulator``."""
    monkeypatch.setenv("AIO88_API_KEY", emulator.api_key)
    monkeypatch.setenv("AIO88_BASE_URL", emulator.base_url)


@pytest.fixture
async def service(
    aio88_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, ModuleType]]:
    """The example app on a free loopback port, its Client pointed at the emulator."""
    point_at(aio88_emulator, monkeypatch)
    module = load_example()
    async with serving(module.app) as base:
        yield base, module


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


@pytest.mark.aio88_emulator(duration=None, dialect="newapi")
async def test_create_errors_map_to_http(
    service: tuple[str, ModuleType],
    aio88_emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each failed create gets the answer docs/web-backends.md gives it, and is sent once."""
    base, _ = service
    emu = aio88_emulator

    async def create(http: aiohttp.ClientSession, prompt: str) -> tuple[int, Any, str | None]:
        async with http.post(f"{base}/jobs", json={"prompt": prompt}) as resp:
            return resp.status, (await resp.json())["detail"], resp.headers.get("Retry-After")

    def made(prompt: str) -> int:
        return [t.prompt for t in emu.tasks.values()].count(prompt)

    async with aiohttp.ClientSession() as http:
        # 429s past the client's four tries: come back later; nothing made.
        emu.inject("429", times=4, method="POST", retry_after=0.01)
        status, detail, retry_after = await create(http, "limited")
        assert (status, detail["error"], retry_after) == (429, "rate_limited", "1")
        # new-api's own 500 is refunded: nothing made, come back later (not resent).
        emu.inject("500", method="POST")
        status, detail, retry_after = await create(http, "failing")
        assert (status, detail["error"], retry_after) == (503, "unavailable", "5")
        assert made("limited") == made("failing") == 0
        # Sent, and the answer lost: unconfirmed, named, never resent; made or not.
        lost: list[tuple[FaultKind, int]] = [("drop", 0), ("truncate", 1)]
        for fault, exists in lost:
            emu.inject(fault, method="POST")
            status, detail, retry_after = await create(http, fault)
            assert (status, detail["error"], retry_after) == (502, "unconfirmed", None)
            assert detail["job"]["prompt"] == fault and made(fault) == exists
        # Refused before sending.
        status, detail, _ = await create(http, " ")
        assert (status, detail["error"]) == (422, "rejected")
        assert emu.creates == 4 + 1 + 2
        # A key the API refuses: the operator's problem, logged; the key is in neither.
        monkeypatch.setattr(emu, "api_key", "sk-another")
        status, detail, _ = await create(http, "refused")
        assert (status, detail) == (500, {"error": "misconfigured", "message": detail["message"]})
    assert "refused our key" in caplog.text
    assert "sk-test" not in caplog.text and "sk-test" not in str(detail)


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


# -- the quickstart's demo ---------------------------------------------------------------


def demo_printer() -> tuple[Printer, io.StringIO]:
    out = io.StringIO()
    return Printer(json_lines=True, stream=out), out


def events_of(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.aio88_emulator(dialect="newapi", duration=None)
async def test_the_demo_sorts_its_failed_creates(aio88_emulator: Emulator) -> None:
    """A create sent and unanswered is unconfirmed (not sent again); a refunded 5xx and
    429s past the client's retries are sent again; a refusal is a failed task."""
    printer, out = demo_printer()
    retry = RetryPolicy(attempts=2, backoff_initial=0.01, backoff_max=0.02)
    emu = aio88_emulator
    async with Client(api_key=emu.api_key, base_url=emu.base_url, retry=retry) as client:

        async def create(prompt: str) -> object:
            return await create_one(client, "video", prompt, prompt, retry, printer)

        emu.inject("drop", method="POST")
        assert await create("dropped") is None
        assert emu.creates == 1  # never sent again

        emu.inject("500", method="POST")  # new-api's shape: refunded, nothing stored
        emu.inject("429", times=2, method="POST")  # both of the client's tries
        made = await create("resent")
        assert isinstance(made, Video) and emu.tasks[made.id].prompt == "resent"
        assert emu.creates == 2 + 3

        emu.inject("truncate", method="POST")  # made, and the answer cut
        assert await create("cut") is None
        assert [t.prompt for t in emu.tasks.values()].count("cut") == 1

        failed = await create("")  # refused before sending
        assert isinstance(failed, Outcome) and isinstance(failed.error, ValueError)
    problems = [e for e in events_of(out) if e["event"] == "unconfirmed"]
    assert [p["id"] for p in problems] == ["dropped", "cut"]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [0, 1])
async def test_the_quickstart_demo_says_what_happens(tmp_path: Path, seed: int) -> None:
    """``aio88 demo --rate-429 0.2 --drop-rate 0.1``, as docs/quickstart.md tells it: the
    429s and every dropped poll and download are ridden out; only creates whose answer was
    lost are left, ``unconfirmed``, and then the exit code is 1."""
    flags = ["--rate-429", "0.2", "--drop-rate", "0.1"]  # the quickstart's
    quick = ["--tasks", "30", "--duration", "0.2", "0.5", "--seed", str(seed)]
    args = build_parser().parse_args(["demo", *flags, *quick, "--out", str(tmp_path), "--json"])
    printer, out = demo_printer()
    code = await demo(args, printer)
    records = events_of(out)
    summary = records[-1]
    unconfirmed = [e for e in records if e["event"] == "unconfirmed"]
    assert summary["failed"] == 0
    assert summary["unconfirmed"] == len(unconfirmed) > 0  # these seeds drop some creates
    assert summary["succeeded"] + summary["unconfirmed"] == summary["tasks"] == 30
    assert len([f async for f in anyio.Path(tmp_path).glob("*.mp4")]) == summary["succeeded"]
    assert code == 1


@pytest.mark.aio88_emulator(duration=None)
async def test_callbacks_end_the_waits_with_one_poll(
    aio88_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``PUBLIC_URL``, jobs carry a ``callback_url``; the emulator's signed callback
    reaches the app's route, and one poll ends every waiter (the fallback schedule's
    next poll is a minute away)."""
    emu = aio88_emulator
    point_at(emu, monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv("PUBLIC_URL", base)
        module = load_example()
        async with serving(module.app, sock), aiohttp.ClientSession() as http:
            async with http.post(f"{base}/jobs", json={"prompt": "a red fox"}) as resp:
                assert resp.status == 201
                job_id = (await resp.json())["id"]
            assert emu.tasks[job_id].request["callback_url"] == f"{base}/88api/callback"

            async def wait() -> str:
                async with http.get(f"{base}/jobs/{job_id}", params={"timeout": "60"}) as resp:
                    assert resp.status == 200
                    return str((await resp.json())["status"])

            waiters = [asyncio.create_task(wait()) for _ in range(5)]
            await until(lambda: emu.count("GET", f"/v1/videos/{job_id}") == 1)  # at once
            emu.complete(job_id)
            assert await asyncio.gather(*waiters) == ["succeeded"] * 5
            # A forged callback is refused and polls nothing.
            async with http.post(
                f"{base}/88api/callback",
                data=emu.callbacks[0].body,
                headers={**emu.callbacks[0].headers, "X-NewAPI-Signature": "sha256=" + "0" * 64},
            ) as resp:
                assert resp.status == 401
    [delivery] = emu.callbacks
    assert (delivery.task_id, delivery.status) == (job_id, 204)
    assert emu.count("GET", f"/v1/videos/{job_id}") == 2  # the first look, and the callback's
