"""`aio88 emulator` as users run it: a real process on a free loopback port, spoken to by
aio88's client and plain aiohttp; its request log, its stats route, its one-line errors,
its help and its clean stop."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from aio88 import Client
from aio88.testing import Emulator

EMULATOR = [sys.executable, "-m", "aio88", "emulator"]
STATS = "/__emulator/stats"


class Running:
    """An emulator process: its stdout read line by line, its stop."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        self.process = process
        self.stdout = BufferedByteReceiveStream(process.stdout)
        self.base_url = ""

    async def line(self) -> str:
        """The next line it prints."""
        with anyio.fail_after(10):
            return (await self.stdout.receive_until(b"\n", 1 << 20)).decode()

    async def stop(self, signum: signal.Signals = signal.SIGINT) -> tuple[int, str, str]:
        """Send ``signum``; its exit code, and the rest of its stdout and its stderr."""
        self.process.send_signal(signum)
        with anyio.fail_after(10):
            code = await self.process.wait()
        assert self.process.stderr is not None
        return code, await _rest(self.stdout), await _rest(self.process.stderr)


async def _rest(stream: anyio.abc.ByteReceiveStream) -> str:
    chunks = []
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
        while True:
            chunks.append(await stream.receive())
    return b"".join(chunks).decode()


@contextlib.asynccontextmanager
async def emulator(*args: str) -> AsyncIterator[Running]:
    """``aio88 emulator --port 0 ARGS``, running; stopped by SIGINT if the test did not."""
    process = await anyio.open_process([*EMULATOR, "--port", "0", *args])
    running = Running(process)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def started(running: Running) -> str:
    """Read the start of a plain-text run; the base URL its export line gives."""
    first = await running.line()
    assert first.startswith("88API emulator (")
    export = await running.line()
    assert export.startswith("export AIO88_BASE_URL=http://127.0.0.1:")
    assert "AIO88_API_KEY=sk-test" in export
    running.base_url = export.split()[1].removeprefix("AIO88_BASE_URL=")
    assert first.rstrip().endswith(f" at {running.base_url}")
    assert STATS in await running.line()
    return running.base_url


async def stats_of(base_url: str) -> dict[str, Any]:
    """The stats route, asked without a key."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}{STATS}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    return body


@pytest.mark.timeout(60)
async def test_log_and_stats_count_the_requests_a_client_makes(tmp_path: Path) -> None:
    """--log prints one line per request as it is answered; the stats route counts
    exactly those requests (creates by family, polls, content on both origins), is
    itself neither logged nor counted, and SIGINT ends the process with code 0."""
    async with emulator("--log", "--dialect", "newapi", "--duration", "0.05", "0.05") as run:
        base_url = await started(run)
        async with Client(api_key="sk-test", base_url=base_url) as client:
            videos = [await client.videos.create(prompt=f"fox {n}") for n in range(2)]
            generation = await client.generations.create(model="kling-v1", prompt="a generated fox")
            for video in videos:
                await client.videos.retrieve(video.id)
            await client.generations.retrieve(generation.id)
            with anyio.fail_after(10):  # the tasks take 0.05 s; a loaded machine, longer
                while (await stats_of(base_url))["tasks"]["succeeded"] < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await client.videos.retrieve(videos[0].id)
            await client.videos.download(videos[0].id, tmp_path / "fox.mp4")
        stats = await stats_of(base_url)
        lines = [await run.line() for _ in range(sum(stats["requests"].values()))]
        code, rest, errors = await run.stop()

    assert (code, rest, errors) == (0, "", "")
    assert stats["creates"] == {"video": 2, "generation": 1, "remix": 0}
    assert stats["polls"] == 4
    assert stats["tasks"] == {"queued": 0, "in_progress": 0, "succeeded": 3, "failed": 0}
    assert stats["dialect"] == "newapi" and stats["in_flight"] == 0
    assert stats["faults"] == dict.fromkeys(("429", "500", "drop", "truncate", "garbage"), 0)
    assert stats["content"]["api"] >= 1 and stats["content"]["media"] >= 1

    # One line per request: time, method, path, status, fault (none here), milliseconds.
    assert not any(STATS in line for line in lines)
    creates = [line for line in lines if " POST /v1/video" in line]
    assert len(creates) == 3 and all(" 200 " in line for line in creates)  # newapi: 200
    assert sum(f" GET /v1/videos/{videos[0].id} 200 " in line for line in lines) == 2
    assert any(" GET /v1/videos/" in line and "/content 307 " in line for line in lines)
    assert any(f" GET /media/{videos[0].id}.mp4 200 " in line for line in lines)
    for line in lines:
        clock, method, path, status, ms = line.split()
        assert len(clock) == 8 and method in ("GET", "HEAD", "POST") and path.startswith("/")
        assert status.isdigit() and ms.endswith("ms")


@pytest.mark.timeout(60)
async def test_json_log_lines_parse_and_faults_are_counted() -> None:
    """With --json every line is JSON: the ready event (what to connect with), then one
    request event each, fault included; the stats count the faults and the 429s."""
    async with emulator("--json", "--log", "--rate-429", "1", "--api-key", "sk-x y") as run:
        ready = json.loads(await run.line())
        assert ready["event"] == "ready" and ready["api_key"] == "sk-x y"
        assert ready["stats_url"] == ready["base_url"] + STATS
        base_url = ready["base_url"]
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"{base_url}/v1/videos/nope") as resp:
                    assert resp.status == 429
        logged = [json.loads(await run.line()) for _ in range(3)]
        stats = await stats_of(base_url)
        code, rest, errors = await run.stop(signal.SIGTERM)

    assert (code, rest, errors) == (0, "", "")
    for event in logged:
        assert event["event"] == "request" and event["origin"] == "api"
        assert (event["method"], event["path"], event["status"]) == ("GET", "/v1/videos/nope", 429)
        assert event["fault"] == "429" and isinstance(event["ms"], float)
    assert stats["faults"] == {"429": 3, "500": 0, "drop": 0, "truncate": 0, "garbage": 0}
    assert stats["rate_limited"] == 3 and stats["statuses"] == {"429": 3}
    assert stats["polls"] == 3


@pytest.mark.timeout(60)
async def test_quiet_prints_only_the_export_line() -> None:
    """--quiet: one line a shell can run to connect, then nothing, not even requests."""
    async with emulator("--quiet") as run:
        export = await run.line()
        assert export.startswith("export AIO88_BASE_URL=http://127.0.0.1:")
        assert " AIO88_API_KEY=sk-test " in export
        assert export.rstrip().endswith(" AIO88_DASHBOARD_TOKEN=dash-test AIO88_USER_ID=1")
        base_url = export.split()[1].removeprefix("AIO88_BASE_URL=")
        await stats_of(base_url)
        async with aiohttp.ClientSession() as http, http.get(f"{base_url}/v1/videos/x") as resp:
            assert resp.status == 401
        assert await run.stop() == (0, "", "")


async def one_line_error(*args: str) -> str:
    """Run the command, which must fail as a usage error: exit 2, nothing on stdout, one
    line on stderr; that line."""
    result = await anyio.run_process([*EMULATOR, *args], check=False)
    errors = result.stderr.decode()
    assert (result.returncode, result.stdout) == (2, b""), errors
    assert errors.count("\n") == 1 and errors.startswith("aio88: error: "), errors
    return errors


@pytest.mark.timeout(60)
async def test_a_busy_port_is_one_line() -> None:
    """A port another process listens on: one line saying so and what to do, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = await one_line_error("--port", str(port))
    assert f"port {port} is in use" in error and "pass --port 0 for a free one" in error


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--duration", "5", "1"], "LOW must not exceed HIGH, got 5 1"),
        (["--duration", "0", "1"], "--duration: must be more than 0"),
        (["--rate-429", "-0.5"], "--rate-429: must be between 0 and 1"),
        (["--failure-rate", "1.5"], "--failure-rate: must be between 0 and 1"),
        (["--drop-rate", "x"], "--drop-rate: must be a number"),
        (["--latency", "-1"], "--latency: must not be negative"),
        (["--port", "70000"], "--port: must be from 0 to 65535"),
        (["--log", "--quiet"], "not allowed with argument --log"),
    ],
)
async def test_bad_flags_are_one_line(args: list[str], says: str) -> None:
    """Out-of-range values and clashing flags: one line naming the flag, exit 2."""
    error = await one_line_error(*args)
    assert error.startswith("aio88: error: aio88 emulator: argument ") and says in error
    assert error.rstrip().endswith("(see aio88 emulator --help)")


@pytest.mark.timeout(60)
async def test_json_errors_are_events_too() -> None:
    """With --json a usage error is also an ``error`` event on stdout."""
    result = await anyio.run_process([*EMULATOR, "--json", "--rate-500", "2"], check=False)
    event = json.loads(result.stdout)
    assert result.returncode == event["exit_code"] == 2
    assert event["event"] == "error" and "--rate-500" in event["message"]


@pytest.mark.timeout(60)
async def test_help_names_the_command_it_was_run_as() -> None:
    """`aio88 emulator --help` says `aio88 emulator`; `python -m aio88.testing` its own."""
    result = await anyio.run_process([*EMULATOR, "--help"])
    text = result.stdout.decode()
    assert text.startswith("usage: aio88 emulator ")
    for flag in ("--log", "--json", "--quiet", "--port", STATS):
        assert flag in text, flag
    result = await anyio.run_process([sys.executable, "-m", "aio88.testing", "--help"])
    assert result.stdout.decode().startswith("usage: python -m aio88.testing ")


async def test_stats_from_python_match_the_route() -> None:
    """Emulator.stats() is what the route serves; a truncate fault that cuts the media
    body behind a /content redirect is one fault, not two; the route is not logged."""
    async with Emulator(dialect="newapi", duration=None) as emu:
        task_id = emu.add_task(status="succeeded")
        emu.inject("truncate", path=f"/v1/videos/{task_id}/content")
        headers = {"Authorization": "Bearer sk-test"}
        async with aiohttp.ClientSession() as http:
            url = f"{emu.base_url}/v1/videos/{task_id}/content"
            # A 307 to the media origin, whose body is then cut.
            async with http.get(url, headers=headers) as resp:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
            async with http.get(f"{emu.base_url}{STATS}") as resp:
                served = await resp.json()
        stats = emu.stats()
        assert served == {**stats.as_dict(), "uptime": served["uptime"]}
        assert stats.faults["truncate"] == 1
        assert stats.content == {"api": 1, "media": 1}
        assert stats.requests == {"api": 1, "media": 1}
        assert [(r.origin, r.fault) for r in emu.requests] == [("api", "truncate"), ("media", None)]
        assert all(r.elapsed is not None for r in emu.requests)
