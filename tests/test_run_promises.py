"""``aio88 run`` keeps its promises at the edges (real ``aio88`` processes, the emulator):
a timeout is not a verdict on a task, and two runs never share one ledger."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process
from commands import AIO88, aio88_process, emulator_env, json_events, write_jobs

from aio88._ledger import Ledger
from aio88.testing import Emulator, Faults, LoggedRequest


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_timeout_is_not_a_failure(tmp_path: Path) -> None:
    """Tasks still running at --timeout stay submitted (exit 1, a clear line); the rerun
    polls and downloads them, and creates nothing again."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 2), tmp_path / "out"
    async with Emulator(duration=None, poll_after_ms=50) as emu:
        env = emulator_env(emu)
        code, stdout, stderr = await aio88_process(
            "run", str(jobs), "--out", str(out), "--json", "--timeout", "0.5", env=env
        )
        assert code == 1, stderr
        assert "still running at --timeout" in stderr and "rerun" in stderr
        records = json_events(stdout)
        assert sorted(e["key"] for e in records if e["event"] == "timed_out") == [
            "job-0",
            "job-1",
        ]
        assert not [e for e in records if e["event"] == "failed"]
        assert records[-1]["timed_out"] == 2 and records[-1].get("failed", 0) == 0

        code, stdout, _ = await aio88_process("run", "--status", str(out), "--json", env=env)
        assert code == 1 and json_events(stdout)[-1]["submitted"] == 2

        for task_id in list(emu.tasks):
            emu.complete(task_id)
        code, stdout, stderr = await aio88_process("run", str(jobs), "--out", str(out), env=env)
        assert code == 0, stderr
        assert emu.creates == 2  # the rerun created nothing
    assert len(list((out / "videos").glob("*.mp4"))) == 2


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_two_runs_on_one_folder(tmp_path: Path) -> None:
    """A second run on the same --out exits 2 at once, naming the folder and the first
    run's pid; the first finishes; each job is created once."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 4), tmp_path / "out"
    async with Emulator(duration=None, poll_after_ms=50) as emu:
        env = emulator_env(emu)
        async with await anyio.open_process(
            [*AIO88, "run", str(jobs), "--out", str(out), "--quiet"], env=env
        ) as first:
            for _ in range(600):  # until the first run holds the ledger and created all
                if emu.creates >= 4:
                    break
                await anyio.sleep(0.05)
            code, _, stderr = await aio88_process("run", str(jobs), "--out", str(out), env=env)
            assert code == 2
            assert f"pid {first.pid}" in stderr and str(out) in stderr
            assert "Traceback" not in stderr
            code, _, _ = await aio88_process("run", "--status", str(out), env=env)
            assert code == 1  # --status only reads: it does not need the lock
            for task_id in list(emu.tasks):
                emu.complete(task_id)
            assert await first.wait() == 0
        assert emu.creates == 4
    # The lock went with the first run: a third run starts, finds everything done.
    async with Emulator(duration=None) as emu:
        code, _, stderr = await aio88_process(
            "run", str(jobs), "--out", str(out), env=emulator_env(emu)
        )
        assert code == 0, stderr
        assert emu.creates == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_refused_key_costs_one_create(tmp_path: Path) -> None:
    """A key the API refuses: exit 2 with one line on stderr, no traceback, one create sent
    (the first goes alone), every job still pending for the rerun with the right key."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 12), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50) as emu:
        env = {**emulator_env(emu), "AIO88_API_KEY": "sk-wrong"}
        code, stdout, stderr = await aio88_process(
            "run", str(jobs), "--out", str(out), "--create-concurrency", "8", env=env
        )
        assert code == 2
        assert "Traceback" not in stderr and "ExceptionGroup" not in stderr
        assert [line for line in stderr.splitlines() if line.startswith("aio88: error:")] == [
            stderr.strip().splitlines()[-1]
        ]
        assert "refused the key" in stderr
        assert emu.count("POST") == 1
        refused = emu.creates  # the one create the server saw and refused
        code, stdout, _ = await aio88_process("run", "--status", str(out), "--json", env=env)
        assert json_events(stdout)[-1]["pending"] == 12

        code, _, stderr = await aio88_process(
            "run", str(jobs), "--out", str(out), env=emulator_env(emu)
        )
        assert code == 0, stderr
        assert emu.creates == refused + 12  # each job created once


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_files_are_checked_not_trusted(tmp_path: Path) -> None:
    """A deleted or overwritten video: --status exits 1 naming it missing or changed, and
    the rerun fetches it again (a changed one is kept aside) without creating anything."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 3), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50) as emu:
        env = emulator_env(emu)
        code, _, stderr = await aio88_process("run", str(jobs), "--out", str(out), env=env)
        assert code == 0, stderr
        gone, changed, kept = sorted((out / "videos").glob("*.mp4"))
        gone.unlink()
        changed.write_bytes(b"not the video any more")

        code, stdout, _ = await aio88_process("run", "--status", str(out), "--json", env=env)
        assert code == 1
        problems = {e["event"]: e["path"] for e in json_events(stdout) if "path" in e}
        assert problems == {"missing": str(gone), "changed": str(changed)}
        assert json_events(stdout)[-1]["missing"] == 1 and json_events(stdout)[-1]["changed"] == 1

        creates = emu.creates
        code, _, stderr = await aio88_process("run", str(jobs), "--out", str(out), env=env)
        assert code == 0, stderr
        assert emu.creates == creates
        code, _, _ = await aio88_process("run", "--status", str(out), env=env)
        assert code == 0
    for path in (gone, changed, kept):
        assert path.read_bytes() == kept.read_bytes()  # the emulator serves one video
    assert changed.with_name(changed.name + ".changed").read_bytes() == b"not the video any more"


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_jobs_file_paths_edits_and_listing(tmp_path: Path) -> None:
    """input_reference is found next to the jobs file from any directory, and checked before
    anything is sent; an edited line is refused (or taken with --replace while its job is
    not sent); --status --all lists every job."""
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "ref.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    jobs = folder / "jobs.jsonl"
    line = {"kind": "video", "prompt": "a fox", "key": "fox", "input_reference": "ref.png"}
    jobs.write_text(json.dumps(line) + "\n")
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50) as emu:
        env = emulator_env(emu)

        async def run(*args: str, key: str | None = None) -> tuple[int, str, str]:
            run_env = env if key is None else {**env, "AIO88_API_KEY": key}
            result = await anyio.run_process(
                [*AIO88, *args], env=run_env, cwd=elsewhere, check=False
            )
            return result.returncode, result.stdout.decode(), result.stderr.decode()

        missing = folder / "missing.jsonl"
        missing.write_text(json.dumps({**line, "input_reference": "nope.png"}) + "\n")
        code, _, stderr = await run("run", str(missing), "--out", str(tmp_path / "o2"))
        assert code == 2 and f"{missing}:1" in stderr and "nope.png" in stderr
        assert emu.count("POST") == 0

        # A refused key leaves the job pending: then the line is edited.
        code, _, _ = await run("run", str(jobs), "--out", str(out), key="sk-wrong")
        assert code == 2
        jobs.write_text(json.dumps({**line, "prompt": "a grey wolf"}) + "\n")
        code, _, stderr = await run("run", str(jobs), "--out", str(out))
        assert code == 2 and "line 1 was edited" in stderr and "--replace" in stderr
        code, _, stderr = await run("run", str(jobs), "--out", str(out), "--replace")
        assert code == 0, stderr
        (task,) = [t for t in emu.tasks.values() if t.request.get("prompt") == "a grey wolf"]
        assert task.files["input_reference"][0] == "ref.png"  # the image, from beside the file

        # Once created, an edit is refused for good: the old form is paid for.
        jobs.write_text(json.dumps({**line, "prompt": "a third animal"}) + "\n")
        code, _, stderr = await run("run", str(jobs), "--out", str(out), "--replace")
        assert code == 2 and "downloaded already" in stderr

        code, stdout, _ = await run("run", "--status", str(out), "--all", "--json")
        assert code == 0
        (listed,) = [e for e in json_events(stdout) if e["event"] == "job"]
        assert listed["key"] == "fox" and listed["state"] == "downloaded"
        assert listed["id"] == task.id and listed["path"].endswith(".mp4")


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_json_mode_speaks_json_only(tmp_path: Path) -> None:
    """--json: numbers are numbers, and an error is an "error" event on stdout too (with
    the exit code), besides its one line on stderr."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 2), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50) as emu:
        code, stdout, _ = await aio88_process(
            "run", str(jobs), "--out", str(out), "--json", env=emulator_env(emu)
        )
        assert code == 0
        summary = json_events(stdout)[-1]
        assert summary["event"] == "summary"
        assert isinstance(summary["bytes"], int) and summary["bytes"] > 0
        assert isinstance(summary["seconds"], float) and isinstance(summary["jobs"], int)

        env = {**emulator_env(emu), "AIO88_API_KEY": ""}
        code, stdout, stderr = await aio88_process(
            "run", str(jobs), "--out", str(out), "--json", env=env
        )
        assert code == 2 and "AIO88_API_KEY" in stderr
        (error,) = json_events(stdout)
        assert error["event"] == "error" and error["exit_code"] == 2
        assert "AIO88_API_KEY" in error["message"]


class Running:
    """An ``aio88`` process started in the background, its output gathered as it comes."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._out: list[bytes] = []
        self._err: list[bytes] = []

    async def gather(self) -> None:
        async def drain(stream: ByteReceiveStream | None, into: list[bytes]) -> None:
            assert stream is not None
            into.extend([chunk async for chunk in stream])

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, self.process.stdout, self._out)
            tg.start_soon(drain, self.process.stderr, self._err)

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    async def result(self, within: float) -> tuple[int, str, str]:
        with anyio.fail_after(within):
            code = await self.process.wait()
        return code, b"".join(self._out).decode(), b"".join(self._err).decode()


async def _until(condition: Callable[[], bool], within: float = 20.0) -> None:
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - the emulator has no event for each state
            await anyio.sleep(0.02)


def _posts_in_flight(emu: Emulator) -> int:
    return sum(1 for r in emu.requests if r.method == "POST" and r.status == 0 and not r.fault)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_ctrl_c_in_a_429_storm_loses_nothing(tmp_path: Path) -> None:
    """Ctrl-C while every create waits out a 429: exit 130 at once, each job created or
    pending (none unconfirmed, none of them was sent), and the rerun creates each job
    exactly once and exits 0."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 10), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50) as emu:
        env = emulator_env(emu)
        argv = [*AIO88, "run", str(jobs), "--out", str(out), "--json", "--create-concurrency", "3"]
        emu.faults.latency = 0.2  # slow enough for the storm to come before the last create
        async with await anyio.open_process(argv, env=env) as process:
            run = Running(process)
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.gather)
                await _until(lambda: emu.creates >= 3)
                emu.faults.rate_429, emu.faults.retry_after = 1.0, 30.0  # a storm
                emu.faults.latency = 0.0
                await _until(lambda: emu.count("POST") > len(emu.tasks) + 2)
                await anyio.sleep(0.3)  # every create now waits out its Retry-After
                run.interrupt()
                code, stdout, stderr = await run.result(within=10)
        assert code == 130, stderr
        assert "Rerun the same command" in stderr and "Traceback" not in stderr
        interrupted = [e for e in json_events(stdout) if e["event"] == "interrupted"]
        assert interrupted and interrupted[0]["unconfirmed"] == 0
        created = len(emu.tasks)
        assert interrupted[0]["created"] == created
        assert interrupted[0]["pending"] == 10 - created

        emu.faults.rate_429 = 0.0
        code, _, stderr = await aio88_process("run", str(jobs), "--out", str(out), env=env)
        assert code == 0, stderr
    prompts = Counter(task.prompt for task in emu.tasks.values())
    assert sorted(prompts) == sorted(f"fox {i}" for i in range(10))
    assert set(prompts.values()) == {1}  # each job created exactly once


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_ctrl_c_lets_sent_creates_answer_and_twice_stops_at_once(tmp_path: Path) -> None:
    """The first Ctrl-C gives creates already sent time to answer: they are recorded, not
    left unconfirmed. A second Ctrl-C stops at once: a create still waiting for its answer
    is then unconfirmed, and only those."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 8), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50) as emu:
        env = emulator_env(emu)
        argv = [*AIO88, "run", str(jobs), "--out", str(out), "--json", "--create-concurrency", "2"]
        emu.faults.latency = 2.0  # every answer takes two seconds: Ctrl-C comes first
        async with await anyio.open_process(argv, env=env) as process:
            run = Running(process)
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.gather)
                await _until(lambda: emu.creates >= 1 and _posts_in_flight(emu) == 2)
                run.interrupt()
                code, stdout, stderr = await run.result(within=10)
        assert code == 130, stderr
        (interrupted,) = [e for e in json_events(stdout) if e["event"] == "interrupted"]
        assert interrupted["unconfirmed"] == 0  # both answered within the grace
        assert interrupted["created"] == len(emu.tasks) == 3
        assert interrupted["pending"] == 5

        emu.faults.latency = 30.0  # now no answer comes in time
        async with await anyio.open_process(argv, env=env) as process:
            run = Running(process)
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.gather)
                await _until(lambda: _posts_in_flight(emu) == 1)  # the first goes alone
                await anyio.sleep(0.2)
                run.interrupt()
                await anyio.sleep(0.3)
                run.interrupt()
                code, stdout, stderr = await run.result(within=5)
                lost = _posts_in_flight(emu)
        assert code == 130, stderr
        (interrupted,) = [e for e in json_events(stdout) if e["event"] == "interrupted"]
        assert interrupted["unconfirmed"] == lost == 1
        assert interrupted["pending"] == 4
        unconfirmed = [e["key"] for e in json_events(stdout) if e["event"] == "unconfirmed"]
        assert unconfirmed == ["job-3"]
        emu.faults.latency = 0.0
        code, stdout, _ = await aio88_process("run", "--status", str(out), "--json", env=env)
        summary = json_events(stdout)[-1]
        assert summary["unconfirmed"] == 1 and summary["pending"] == 4
        assert summary.get("submitting", 0) == 0


def _answer_lost(request: LoggedRequest) -> bool:
    """A create whose answer cannot have reached the client: dropped, cut, unreadable."""
    return request.fault in ("drop", "truncate", "garbage")


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_faulty_batch_killed_and_rerun_pays_once(tmp_path: Path) -> None:
    """2,000 jobs with 429s, 5xx, dropped connections and cut answers; ``kill -9`` halfway
    (while creates wait for their answers), then a rerun, faults still on. No job is
    created twice, and ``unconfirmed`` is exactly the creates whose answer was lost, as
    the emulator's log counts them."""
    total = 2000
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", total), tmp_path / "out"
    faults = Faults(rate_429=0.03, rate_500=0.02, drop_rate=0.01, truncate_rate=0.01)
    async with Emulator(
        duration=(0.05, 0.3), poll_after_ms=50, faults=faults, dialect="newapi"
    ) as emu:
        env = emulator_env(emu)
        argv = [*AIO88, "run", str(jobs), "--out", str(out), "--create-concurrency", "16"]
        silent = subprocess.DEVNULL
        async with await anyio.open_process(argv, env=env, stdout=silent, stderr=silent) as process:
            await _until(lambda: len(emu.tasks) >= total // 2, within=120)
            # Hold every answer from now on, let the answers already given arrive, then
            # kill: the creates in flight are exactly those the server holds.
            emu.faults.latency = 30.0
            ledger = Ledger(out, lock=False)

            def held_now() -> list[LoggedRequest]:
                return [
                    r for r in emu.requests if r.method == "POST" and r.status == 0 and not r.fault
                ]

            # Until the client's "submitting" jobs are exactly the creates the server holds
            # (the answers given before have arrived, the creates sent have been read).
            await _until(lambda: ledger.counts()["submitting"] == len(held_now()) > 0)
            held = held_now()
            process.kill()
            ledger.close()
            assert await process.wait() == -signal.SIGKILL
        emu.faults.latency = 0.0
        await _until(lambda: emu.in_flight == 0, within=40)
        code, _, stderr = await aio88_process(
            "run", str(jobs), "--out", str(out), "--quiet", env=env
        )
        assert code == 1, stderr  # some are unconfirmed

        code, stdout, _ = await aio88_process(
            "run", "--status", str(out), "--all", "--json", env=env
        )
        listed = {e["key"]: e for e in json_events(stdout) if e["event"] == "job"}
        posts = [r for r in emu.requests if r.method == "POST"]
        lost = {id(r) for r in posts if _answer_lost(r)} | {id(r) for r in held}

    assert len(listed) == total
    by_state = Counter(job["state"] for job in listed.values())
    assert by_state["submitting"] == 0, by_state
    # Never paid twice: one task at most per job.
    prompts = Counter(task.prompt for task in emu.tasks.values())
    assert max(prompts.values()) == 1
    # A job still pending is one whose every try provably created nothing (faults on, a
    # few in a row can hit one create): nothing billed, a rerun sends it. It has no task.
    pending = {key: job for key, job in listed.items() if job["state"] == "pending"}
    assert len(pending) <= 2, pending
    assert not [key for key in pending if prompts[f"fox {key.split('-')[1]}"]], pending
    # Unconfirmed: exactly the creates whose answer was lost, no more, no fewer.
    assert by_state["unconfirmed"] == len(lost) > 0, by_state
    # And every task the client never heard of belongs to an unconfirmed job.
    known = {job["id"] for job in listed.values() if job["id"]}
    unheard = {task.prompt for task in emu.tasks.values() if task.id not in known}
    unconfirmed = {
        f"fox {key.split('-')[1]}" for key, job in listed.items() if job["state"] == "unconfirmed"
    }
    assert unheard <= unconfirmed
    assert (
        by_state["downloaded"]
        + by_state["failed"]
        + by_state["unconfirmed"]
        + by_state["download_failed"]
        + by_state["pending"]
        == total
    )


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_configuration_mistakes_cost_nothing_and_say_what_to_do(
    tmp_path: Path, closed_port: int
) -> None:
    """A base URL with no such route, an API nobody answers at, a mistyped flag: each ends
    the run at once with exit 2 (or 1 for the network) and one line naming the fix; the
    jobs stay pending and cost at most one create."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50) as emu:
        env = {**emulator_env(emu), "AIO88_BASE_URL": emu.base_url + "/wrong"}
        code, stdout, stderr = await aio88_process(
            "run", str(jobs), "--out", str(tmp_path / "a"), env=env
        )
        assert code == 2, stderr
        assert "AIO88_BASE_URL" in stderr and len(stderr.strip().splitlines()) == 1
        assert emu.count("POST") == 1
        code, stdout, _ = await aio88_process(
            "run", "--status", str(tmp_path / "a"), "--json", env=env
        )
        assert json_events(stdout)[-1]["pending"] == 6

        # A gateway failing every create (here 500s that do not say "refunded"): three
        # tries, then the run stops; the jobs not sent stay pending.
        emu.faults.rate_500 = 1.0
        code, stdout, stderr = await aio88_process(
            "run", str(jobs), "--out", str(tmp_path / "p"), "--json", env=emulator_env(emu)
        )
        assert code == 1 and "the first 3 creates all failed" in stderr
        assert emu.count("POST") == 1 + 3
        assert json_events(stdout)[-1]["event"] == "error"
        code, stdout, _ = await aio88_process(
            "run", "--status", str(tmp_path / "p"), "--json", env=env
        )
        summary = json_events(stdout)[-1]
        assert summary["unconfirmed"] == 3 and summary["pending"] == 3
        emu.faults.rate_500 = 0.0

        # openai-python's way of writing the base URL works as it is.
        env = {**emulator_env(emu), "AIO88_BASE_URL": emu.base_url + "/v1"}
        code, _, stderr = await aio88_process(
            "run", str(jobs), "--out", str(tmp_path / "a"), env=env
        )
        assert code == 0, stderr
        assert len(emu.tasks) == 6

    env = {**env, "AIO88_BASE_URL": f"http://127.0.0.1:{closed_port}"}
    code, _, stderr = await aio88_process("run", str(jobs), "--out", str(tmp_path / "b"), env=env)
    assert code == 1
    (line,) = stderr.strip().splitlines()
    assert "cannot reach the API" in line and "nothing was sent" in line

    code, stdout, stderr = await aio88_process(
        "run", str(jobs), "--out", str(tmp_path / "c"), "--concurrency", "many", "--json", env=env
    )
    assert code == 2
    (line,) = stderr.strip().splitlines()
    assert "--concurrency" in line and "whole number" in line and "_positive_int" not in line
    (error,) = json_events(stdout)
    assert error["event"] == "error" and error["exit_code"] == 2

    code, _, stderr = await aio88_process(
        "run", str(jobs), "--out", str(tmp_path / "c"), env={**env, "AIO88_API_KEY": ""}
    )
    assert code == 2 and "set AIO88_API_KEY" in stderr and "Client(" not in stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_output_flags(tmp_path: Path) -> None:
    """-v shows each create and each retry with its real pause; --quiet only what went
    wrong, and what to do about it; a one-task command prints its result even quiet."""
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 3), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50) as emu:
        env = emulator_env(emu)
        emu.inject("429", times=1, method="POST", retry_after=0.3)
        code, stdout, stderr = await aio88_process(
            "run", str(jobs), "--out", str(out), "-v", env=env
        )
        assert code == 0, stderr
        assert "POST /v1/videos failed (HTTP 429, the whole client pauses); retry 1 in 0.30s" in (
            stderr
        )
        assert stdout.count("created ") == 3 and stdout.count("done ") == 3

        emu.inject("drop", times=1, method="POST")
        out2 = tmp_path / "out2"
        code, stdout, stderr = await aio88_process(
            "run", str(jobs), "--out", str(out2), "-q", env=env
        )
        assert code == 1
        assert stdout.startswith("unconfirmed ") and "done " not in stdout
        assert "1 job(s) unconfirmed" in stderr and "--resend-unconfirmed" in stderr

        code, stdout, _ = await aio88_process(
            "create", "--prompt", "a fox", "-q", "--json", env=env
        )
        assert code == 0
        (created,) = json_events(stdout)
        assert created["event"] == "created" and created["id"] in emu.tasks
