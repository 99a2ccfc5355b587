"""The `aio88` command through its real entry point, against the emulator over loopback.

Most of these tests wait: on processes starting, and on the schedule's first poll two
seconds after a create. Those marked ``@scenario`` are independent of one another (each its
own emulator and folders) and run side by side in the background of the module (see
``side_by_side.py``); each test waits for its own and fails with its failure. Their
timeout is long: they share the machine with one another.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from side_by_side import SideBySide, side_by_side

from aio88 import Client
from aio88._cli._jobs import create_job, load_jobs
from aio88._cli._output import Printer, Tally
from aio88._ledger import Ledger
from aio88.testing import Emulator
from aio88.testing._arguments import UsageError

AIO88 = [sys.executable, "-m", "aio88"]

#: The emulators of these tests send a poll hint (``openai-poll-after-ms``), which the
#: CLI's default schedule follows down to its 1 s floor instead of its 5 s first tier. The
#: first poll of a task just created still waits the schedule's 2 s: no hint came yet.
POLL_HINT_MS = 50

T = TypeVar("T")


def env_for(emu: Emulator | None, key: str | None = "sk-test") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
    if key is not None:
        env["AIO88_API_KEY"] = key
    if emu is not None:
        env["AIO88_BASE_URL"] = emu.base_url
    return env


async def aio88(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    result = await anyio.run_process([*AIO88, *args], env=env, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def together(*calls: Callable[[], Awaitable[T]]) -> list[T]:
    """Run independent calls (each a command in its own process) side by side; their
    results in the order given."""
    results: dict[int, T] = {}

    async def run(index: int, call: Callable[[], Awaitable[T]]) -> None:
        results[index] = await call()

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(run, index, call)
    return [results[index] for index in range(len(calls))]


def command(*args: str, env: dict[str, str]) -> Callable[[], Awaitable[tuple[int, str, str]]]:
    """``aio88 <args>``, to run later (with :func:`together`)."""

    async def call() -> tuple[int, str, str]:
        return await aio88(*args, env=env)

    return call


#: A test's body: given its own temporary folder, it runs and asserts.
Scenario = Callable[[Path], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(body: Scenario) -> Callable[[SideBySide], Awaitable[None]]:
    """Make ``body`` a test that runs side by side with the module's other scenarios: the
    ``scenarios`` fixture starts every selected one, the test waits for its own."""
    name = body.__name__
    SCENARIOS[name] = body

    async def test(scenarios: SideBySide) -> None:
        await scenarios.result(name)

    test.__name__ = test.__qualname__ = name
    test.__doc__ = body.__doc__
    return test


@pytest.fixture(scope="module")
async def scenarios(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, anyio_backend: str
) -> AsyncIterator[SideBySide]:
    """Every scenario of this module that is selected, started at once in the background."""
    selected = {item.name for item in request.session.items if item.path == request.path}
    async with side_by_side() as background:
        for name, body in SCENARIOS.items():
            if name in selected:
                background.start(name, functools.partial(body, tmp_path_factory.mktemp(name)))
        yield background


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def write_jobs(path: Path, n: int) -> Path:
    lines: list[dict[str, object]] = []
    for i in range(n):
        if i % 2:
            lines.append(
                {"kind": "video", "model": "sora-2", "prompt": f"fox {i}", "key": f"job-{i}"}
            )
        else:
            lines.append(
                {
                    "kind": "generation",
                    "model": "kling-v1",
                    "prompt": f"fox {i}",
                    "duration": 5,
                    "key": f"job-{i}",
                }
            )
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


# -- demo ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    """`aio88 demo` creates, polls and downloads; exit 0; playable MP4 files; a summary."""
    code, out, err = await aio88(
        "demo",
        "--tasks",
        "8",
        "--duration",
        "0.2",
        "0.5",
        "--out",
        str(tmp_path / "v"),
        "--json",
        env=env_for(None, key=None),
    )
    assert code == 0, err
    records = events(out)
    summary = records[-1]
    assert summary["event"] == "summary"
    assert summary["tasks"] == 8 and summary["succeeded"] == 8 and summary["failed"] == 0
    files = sorted((tmp_path / "v").glob("*.mp4"))
    assert len(files) == 8
    assert all(f.read_bytes()[4:8] == b"ftyp" for f in files)


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_demo_survives_faults_and_reports_failures(tmp_path: Path) -> None:
    """429s and dropped connections are survived; failed tasks make exit code 1."""
    code, out, err = await aio88(
        "demo",
        "--tasks",
        "10",
        "--duration",
        "0.2",
        "0.4",
        "--failure-rate",
        "0.4",
        "--rate-429",
        "0.2",
        "--drop-rate",
        "0.1",
        "--out",
        str(tmp_path / "v"),
        "--quiet",
        env=env_for(None, key=None),
    )
    assert code == 1, err
    assert "failed" in out and "succeeded" in out
    assert "done " not in out  # --quiet: only the summary


# -- run -------------------------------------------------------------------------------


async def wait_until(predicate: Any, timeout: float = 60.0) -> None:
    """Poll a condition on state another process changes (no event to wait on)."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the state lives in a subprocess and a server
            await anyio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_run_survives_sigkill_without_paying_twice(tmp_path: Path) -> None:
    """SIGKILL part-way through a 100-job batch, rerun: every job ends downloaded, and the
    server counted exactly 100 creates."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 100)
    out = tmp_path / "out"
    async with Emulator(duration=(0.5, 3.0), seed=3, poll_after_ms=POLL_HINT_MS) as emu:
        env = env_for(emu)
        process = await anyio.open_process(
            [*AIO88, "run", str(jobs), "--out", str(out), "--json"], env=env
        )
        videos = out / "videos"
        try:
            # Part-way: every create confirmed, some videos saved, others still running.
            await wait_until(lambda: emu.creates == 100 and len(list(videos.glob("*.mp4"))) >= 10)
            ledger = Ledger(out, lock=False)  # reading while the run holds it
            confirmed = ledger.counts()
            ledger.close()
            assert confirmed["submitted"] + confirmed["downloaded"] == 100
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await process.aclose()
        saved_before = len(list(videos.glob("*.mp4")))
        assert saved_before < 100, "the batch ended before it could be killed"

        code, stdout, stderr = await aio88("run", str(jobs), "--out", str(out), "--json", env=env)
    assert code == 0, stderr
    assert emu.creates == 100  # not one create again
    assert len(list(videos.glob("*.mp4"))) == 100
    assert not list(videos.glob("*.part"))
    summary = events(stdout)[-1]
    assert summary["downloaded"] == 100 and summary["jobs"] == 100
    # A third run has nothing to do and sends nothing.
    before = len(emu.requests)
    code, _, _ = await aio88("run", str(jobs), "--out", str(out), env=env)
    assert code == 0 and len(emu.requests) == before


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_creates_in_flight_at_a_crash_are_not_resent(tmp_path: Path) -> None:
    """A create in flight at SIGKILL is 'unconfirmed': reported, not resent, until asked.
    (The run's first create goes alone, so exactly one is in flight here.)"""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    out = tmp_path / "out"
    async with Emulator(duration=(0.2, 0.4), poll_after_ms=POLL_HINT_MS) as emu:
        env = env_for(emu)
        emu.faults.latency = 30.0  # every request hangs: the first create stays in flight
        process = await anyio.open_process(
            [*AIO88, "run", str(jobs), "--out", str(out), "--create-concurrency", "2"], env=env
        )
        try:
            await wait_until(lambda: emu.in_flight == 1)
            await anyio.sleep(0.3)  # nothing else goes out while the first is unanswered
            assert emu.in_flight == 1
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await process.aclose()
        emu.faults.latency = 0.0
        sent = emu.creates
        assert sent == 1

        code, stdout, _ = await aio88("run", str(jobs), "--out", str(out), "--json", env=env)
        assert code == 1  # one job could not be settled
        unconfirmed = [e for e in events(stdout) if e["event"] == "unconfirmed"]
        assert len(unconfirmed) == 1 and "resend-unconfirmed" in unconfirmed[0]["error"]
        assert emu.creates == sent + 5  # only the five never sent

        code, stdout, _ = await aio88("run", "--status", str(out), "--json", env=env)
        assert code == 1 and events(stdout)[-1]["unconfirmed"] == 1

        code, stdout, _ = await aio88(
            "run", str(jobs), "--out", str(out), "--resend-unconfirmed", "--json", env=env
        )
        assert code == 0
        assert emu.creates == sent + 6
        assert events(stdout)[-1]["downloaded"] == 6


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_run_reports_failed_tasks(tmp_path: Path) -> None:
    """Failed tasks are recorded and make exit code 1; a rerun does not retry them."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    out = tmp_path / "out"
    async with Emulator(
        duration=(0.1, 0.3), failure_rate=0.5, seed=2, poll_after_ms=POLL_HINT_MS
    ) as emu:
        env = env_for(emu)
        code, stdout, _ = await aio88("run", str(jobs), "--out", str(out), "--json", env=env)
        assert code == 1
        summary = events(stdout)[-1]
        assert summary["failed"] > 0 and summary["failed"] + summary["downloaded"] == 6
        creates = emu.creates
        code, _, _ = await aio88("run", str(jobs), "--out", str(out), env=env)
        assert code == 1 and emu.creates == creates
        code, stdout, _ = await aio88("run", "--status", str(out), env=env)
        assert code == 1 and "failed" in stdout


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_a_refunded_500_is_sent_again(tmp_path: Path) -> None:
    """A create answered by the API's own 500 was refunded (docs/billing.md): the run sends
    it again, and each job is created once."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"kind": "video", "prompt": "ok", "key": "a"})
        + "\n"
        + json.dumps({"kind": "video", "prompt": "x", "key": "b", "extra": 1})
        + "\n"
    )
    # new-api's own 500 (the newapi dialect's shape C, with its code) is refunded.
    async with Emulator(duration=(0.1, 0.2), poll_after_ms=POLL_HINT_MS, dialect="newapi") as emu:
        emu.inject("500", method="POST", path="/v1/videos", times=1)
        code, stdout, _ = await aio88(
            "run", str(jobs), "--out", str(tmp_path / "o"), "--json", env=env_for(emu)
        )
        assert len(emu.tasks) == 2
    assert code == 0
    states = {e.get("key"): e["event"] for e in events(stdout) if "key" in e}
    assert states == {"a": "done", "b": "done"}


# -- bad input ---------------------------------------------------------------------------


#: Bad jobs files, and what the refusal must say.
MALFORMED = [
    ('{"kind": "video", "prompt": "ok"}\n{not json\n', "jobs.jsonl:2: not valid JSON"),
    ("[1, 2]\n", "jobs.jsonl:1: each line must be a JSON object"),
    ('{"kind": "audio", "prompt": "x"}\n', '"kind" must be "video" or "generation"'),
    ('{"kind": "video", "prompt": ""}\n', '"prompt" must be a non-empty string'),
    ('{"kind": "generation", "prompt": "x"}\n', 'needs a "model"'),
    ('{"prompt": "x"}\n{"prompt": "x"}\n', "the same job as line 1"),
    ('{"prompt": "x", "key": 5}\n', '"key" must be a non-empty string'),
    ("\n# only a comment\n", "holds no jobs"),
    ('{"prompt": "x", "callback_url": "ftp://a/b"}\n', '"callback_url" must be an http'),
    ('{"prompt": "x", "callback_url": "https:///cb"}\n', "has no host"),
]


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_malformed_jobs_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    """A bad line: its number and what is wrong, exit 2, no request, no ledger. (Each bad
    file in its own folder and process, side by side.)"""
    async with Emulator() as emu:
        calls = []
        for number, (content, _) in enumerate(MALFORMED):
            folder = tmp_path / str(number)
            folder.mkdir()
            (folder / "jobs.jsonl").write_text(content)
            calls.append(
                command(
                    "run", str(folder / "jobs.jsonl"), "--out", str(folder / "o"), env=env_for(emu)
                )
            )
        results = await together(*calls)
    for number, ((content, message), (code, _, err)) in enumerate(
        zip(MALFORMED, results, strict=True)
    ):
        assert code == 2, (content, err)
        assert message in err, (content, err)
        assert not (tmp_path / str(number) / "o" / "ledger.sqlite3").exists(), content
    assert emu.requests == []


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_configuration_errors_exit_2(tmp_path: Path) -> None:
    """No key, an unwritable --out, an unknown flag, a missing file: exit 2, nothing sent.
    (The commands are independent: they run side by side.)"""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 2)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    async with Emulator() as emu:
        env = env_for(emu)
        cases = [
            (
                ("run", str(jobs), "--out", str(tmp_path / "o")),
                env_for(emu, key=None),
                "AIO88_API_KEY",
            ),
            (("run", str(jobs), "--out", str(blocker / "o")), env, "cannot write"),
            (
                ("run", str(jobs), "--out", str(tmp_path / "o"), "--bogus"),
                env,
                "unrecognized arguments",
            ),
            (
                ("run", str(jobs), "--out", str(tmp_path / "o"), "--ledger", "mysql://db/x"),
                env,
                "--ledger takes a PostgreSQL URL",
            ),
            (("run", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)), env, "cannot read"),
            (("run", str(jobs)), env, "--out"),
            (("run", "--status", str(tmp_path / "nowhere")), env, "no ledger"),
            (("status", "task_x"), env_for(emu, key="sk-wrong"), "refused the key"),
        ]
        results = await together(*(command(*args, env=env) for args, env, _ in cases))
        for (args, _, message), (code, _, err) in zip(cases, results, strict=True):
            assert code == 2 and message in err, (args, err)
        assert all(r.status == 401 for r in emu.requests)


# -- single tasks ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
@scenario
async def test_single_task_commands(tmp_path: Path) -> None:
    """create, status, wait (with download) and download, each through the entry point.
    (A generation's commands, a video's, and the refusals run side by side.)"""
    async with Emulator(duration=(0.2, 0.4), poll_after_ms=POLL_HINT_MS) as emu:
        env = env_for(emu)

        async def generation() -> None:
            code, out, err = await aio88(
                *("create", "--kind", "generation", "--model", "kling-v1"),
                *("--prompt", "a fox", "--duration", "5", "--json"),
                env=env,
            )
            assert code == 0, err
            task_id = events(out)[0]["id"]
            code, out, _ = await aio88("status", task_id, "--kind", "generation", "--json", env=env)
            assert code == 0 and events(out)[0]["id"] == task_id
            code, out, _ = await aio88(
                *("wait", task_id, "--kind", "generation"),
                *("--download", str(tmp_path / "g.mp4"), "--json"),
                env=env,
            )
            assert code == 0 and events(out)[0]["path"] == str(tmp_path / "g.mp4")
            assert (tmp_path / "g.mp4").read_bytes()[4:8] == b"ftyp"
            code, _, _ = await aio88(
                "download", task_id, str(tmp_path / "g2.mp4"), "--kind", "generation", env=env
            )
            assert code == 0

        async def video() -> None:
            code, out, _ = await aio88(
                "create", "--prompt", "a fox", "--seconds", "4", "--json", env=env
            )
            video_id = events(out)[0]["id"]
            code, out, _ = await aio88("wait", video_id, env=env)
            assert code == 0 and "done" in out
            code, out, _ = await aio88("download", video_id, str(tmp_path / "v.mp4"), env=env)
            assert code == 0 and (tmp_path / "v.mp4").exists()
            emu.fail(video_id)
            code, out, _ = await aio88("status", video_id, "--json", env=env)
            assert code == 1 and events(out)[0]["status"] == "failed"

        async def failing() -> None:
            code, out, _ = await aio88("wait", emu.add_task(status="failed"), env=env)
            assert code == 1 and "TaskFailedError" in out

        async def refusals() -> None:
            results = await together(
                command("create", "--kind", "generation", "--prompt", "x", env=env),
                command("create", "--prompt", "x", "--duration", "3", env=env),
                command(
                    *("create", "--kind", "generation", "--model", "m"),
                    *("--prompt", "x", "--seconds", "3"),
                    env=env,
                ),
                command("status", "task_missing", env=env),
            )
            (c1, _, e1), (c2, _, e2), (c3, _, e3), (c4, _, e4) = results
            assert c1 == 2 and "--model" in e1
            assert c2 == 2 and "--seconds" in e2
            assert c3 == 2 and "--duration" in e3
            assert c4 == 1 and "NotFound" not in e4 and "Task not found" in e4

        async with anyio.create_task_group() as tg:
            for part in (generation, video, failing, refusals):
                tg.start_soon(part)


async def test_emulator_command() -> None:
    """`aio88 emulator` serves an emulated 88API."""
    process = await anyio.open_process([*AIO88, "emulator", "--port", "0"])
    try:
        assert process.stdout is not None
        line = (await process.stdout.receive()).decode()
        assert "88API emulator" in line and "http://127.0.0.1:" in line
    finally:
        process.send_signal(signal.SIGINT)
        await process.wait()
        await process.aclose()


# -- output ------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_without_rich_gets_plain_lines_and_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without rich (the aio88[cli] extra) a terminal gets the plain lines, and one line
    on stderr saying how to get the live display (tests/test_cli_live.py tests it)."""
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich fails
    stream = FakeTerminal()
    printer = Printer(json_lines=False, quiet=False, stream=stream)
    assert not printer.live
    tally = Tally(total=4, queued=1, running=1, done=1, failed=1, bytes=2_500_000)
    printer.progress(tally, force=True)
    printer.progress(tally)
    printer.event("done", id="t1")
    assert stream.getvalue() == "done       id=t1\n"
    assert capsys.readouterr().err == "aio88: " + Printer.HINT + "\n"
    Printer(json_lines=False, quiet=False, stream=io.StringIO()).progress(tally)
    assert capsys.readouterr().err == ""  # not a terminal: no hint


def test_load_jobs_accepts_extras_and_comments(tmp_path: Path) -> None:
    """Comments and blank lines are skipped; unknown fields travel as extra_body."""
    jobs = tmp_path / "j.jsonl"
    jobs.write_text('# header\n\n{"prompt": "x", "resolution": "720P"}\n')
    [job] = load_jobs(jobs)
    assert job.kind == "video" and job.line == 3 and job.request["resolution"] == "720P"
    with pytest.raises(UsageError, match="not UTF-8"):
        (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe")
        load_jobs(tmp_path / "bin.jsonl")


async def test_a_jobs_callback_url_goes_with_its_create(tmp_path: Path) -> None:
    """``callback_url`` on a job line is sent with the create, for both kinds."""
    jobs = tmp_path / "j.jsonl"
    jobs.write_text(
        '{"prompt": "v", "callback_url": "https://backend.example/cb"}\n'
        '{"kind": "generation", "model": "kling-v1", "prompt": "g", '
        '"callback_url": "https://backend.example/cb"}\n'
    )
    async with Emulator() as emu, Client(emu.api_key, base_url=emu.base_url) as client:
        for job in load_jobs(jobs):
            await create_job(client, job)
        sent = [task.request for task in emu.tasks.values()]
    assert [r.get("callback_url") for r in sent] == ["https://backend.example/cb"] * 2
