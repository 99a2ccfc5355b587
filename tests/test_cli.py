"""The `aio88` command through its real entry point, against the emulator over loopback."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from aio88._cli import Printer, Tally, UsageError, load_jobs
from aio88._ledger import Ledger
from aio88.testing import Emulator

AIO88 = [sys.executable, "-m", "aio88"]


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


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def write_jobs(path: Path, n: int) -> Path:
    lines = []
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


async def test_run_survives_sigkill_without_paying_twice(tmp_path: Path) -> None:
    """SIGKILL part-way through a 100-job batch, rerun: every job ends downloaded, and the
    server counted exactly 100 creates."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 100)
    out = tmp_path / "out"
    async with Emulator(duration=(0.5, 3.0), seed=3) as emu:
        env = env_for(emu)
        process = await anyio.open_process(
            [*AIO88, "run", str(jobs), "--out", str(out), "--json"], env=env
        )
        videos = out / "videos"
        try:
            # Part-way: every create confirmed, some videos saved, others still running.
            await wait_until(lambda: emu.creates == 100 and len(list(videos.glob("*.mp4"))) >= 10)
            ledger = Ledger(out)
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


async def test_creates_in_flight_at_a_crash_are_not_resent(tmp_path: Path) -> None:
    """A create in flight at SIGKILL is 'unconfirmed': reported, not resent, until asked."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    out = tmp_path / "out"
    async with Emulator(duration=(0.2, 0.4)) as emu:
        env = env_for(emu)
        emu.faults.latency = 30.0  # every request hangs: creates stay in flight
        process = await anyio.open_process(
            [*AIO88, "run", str(jobs), "--out", str(out), "--create-concurrency", "2"], env=env
        )
        try:
            await wait_until(lambda: emu.in_flight == 2)
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await process.aclose()
        emu.faults.latency = 0.0
        sent = emu.creates
        assert sent == 2

        code, stdout, _ = await aio88("run", str(jobs), "--out", str(out), "--json", env=env)
        assert code == 1  # two jobs could not be settled
        unconfirmed = [e for e in events(stdout) if e["event"] == "unconfirmed"]
        assert len(unconfirmed) == 2 and "resend-unconfirmed" in unconfirmed[0]["error"]
        assert emu.creates == sent + 4  # only the four never sent

        code, stdout, _ = await aio88("run", "--status", str(out), "--json", env=env)
        assert code == 1 and events(stdout)[-1]["unconfirmed"] == 2

        code, stdout, _ = await aio88(
            "run", str(jobs), "--out", str(out), "--resend-unconfirmed", "--json", env=env
        )
        assert code == 0
        assert emu.creates == sent + 6
        assert events(stdout)[-1]["downloaded"] == 6


async def test_run_reports_failed_tasks(tmp_path: Path) -> None:
    """Failed tasks are recorded and make exit code 1; a rerun does not retry them."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    out = tmp_path / "out"
    async with Emulator(duration=(0.1, 0.3), failure_rate=0.5, seed=2) as emu:
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


async def test_server_rejections_are_recorded(tmp_path: Path) -> None:
    """A create the server refuses (400) is 'rejected': nothing billed, reported."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps({"kind": "video", "prompt": "ok", "key": "a"})
        + "\n"
        + json.dumps({"kind": "video", "prompt": "x", "key": "b", "extra": 1})
        + "\n"
    )
    async with Emulator(duration=(0.1, 0.2)) as emu:
        emu.inject("500", method="POST", path="/v1/videos", times=1)
        code, stdout, _ = await aio88(
            "run", str(jobs), "--out", str(tmp_path / "o"), "--json", env=env_for(emu)
        )
    assert code == 1
    states = {
        e.get("key"): e["event"] for e in events(stdout) if e["event"] in ("unconfirmed", "done")
    }
    assert sorted(states.values()) == ["done", "unconfirmed"]  # the 500 may have created it


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"kind": "video", "prompt": "ok"}\n{not json\n', "jobs.jsonl:2: not valid JSON"),
        ("[1, 2]\n", "jobs.jsonl:1: each line must be a JSON object"),
        ('{"kind": "audio", "prompt": "x"}\n', '"kind" must be "video" or "generation"'),
        ('{"kind": "video", "prompt": ""}\n', '"prompt" must be a non-empty string'),
        ('{"kind": "generation", "prompt": "x"}\n', 'needs a "model"'),
        ('{"prompt": "x"}\n{"prompt": "x"}\n', "the same job as line 1"),
        ('{"prompt": "x", "key": 5}\n', '"key" must be a non-empty string'),
        ("\n# only a comment\n", "holds no jobs"),
    ],
)
async def test_malformed_jobs_are_refused_before_anything_is_sent(
    tmp_path: Path, content: str, message: str
) -> None:
    """A bad line: its number and what is wrong, exit 2, no request, no ledger."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(content)
    async with Emulator() as emu:
        code, _, err = await aio88("run", str(jobs), "--out", str(tmp_path / "o"), env=env_for(emu))
    assert code == 2
    assert message in err
    assert emu.requests == []
    assert not (tmp_path / "o" / "ledger.sqlite3").exists()


async def test_configuration_errors_exit_2(tmp_path: Path) -> None:
    """No key, an unwritable --out, an unknown flag, a missing file: exit 2, nothing sent."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", 2)
    async with Emulator() as emu:
        code, _, err = await aio88(
            "run", str(jobs), "--out", str(tmp_path / "o"), env=env_for(emu, key=None)
        )
        assert code == 2 and "AIO88_API_KEY" in err
        blocker = tmp_path / "file"
        blocker.write_text("x")
        code, _, err = await aio88("run", str(jobs), "--out", str(blocker / "o"), env=env_for(emu))
        assert code == 2 and "cannot write" in err
        code, _, err = await aio88(
            "run", str(jobs), "--out", str(tmp_path / "o"), "--bogus", env=env_for(emu)
        )
        assert code == 2 and "unrecognized arguments" in err
        code, _, err = await aio88(
            "run", str(tmp_path / "none.jsonl"), "--out", str(tmp_path), env=env_for(emu)
        )
        assert code == 2 and "cannot read" in err
        code, _, err = await aio88("run", str(jobs), env=env_for(emu))
        assert code == 2 and "--out" in err
        code, _, err = await aio88("run", "--status", str(tmp_path / "nowhere"), env=env_for(emu))
        assert code == 2 and "no ledger" in err
        code, _, err = await aio88("status", "task_x", env=env_for(emu, key="sk-wrong"))
        assert code == 2 and "refused the key" in err
        assert all(r.status == 401 for r in emu.requests)


# -- single tasks ------------------------------------------------------------------------


async def test_single_task_commands(tmp_path: Path) -> None:
    """create, status, wait (with download) and download, each through the entry point."""
    async with Emulator(duration=(0.2, 0.4)) as emu:
        env = env_for(emu)
        code, out, err = await aio88(
            "create",
            "--kind",
            "generation",
            "--model",
            "kling-v1",
            "--prompt",
            "a fox",
            "--duration",
            "5",
            "--json",
            env=env,
        )
        assert code == 0, err
        task_id = events(out)[0]["id"]
        code, out, _ = await aio88("status", task_id, "--kind", "generation", "--json", env=env)
        assert code == 0 and events(out)[0]["id"] == task_id
        code, out, _ = await aio88(
            "wait",
            task_id,
            "--kind",
            "generation",
            "--download",
            str(tmp_path / "g.mp4"),
            "--json",
            env=env,
        )
        assert code == 0 and events(out)[0]["path"] == str(tmp_path / "g.mp4")
        assert (tmp_path / "g.mp4").read_bytes()[4:8] == b"ftyp"

        code, out, _ = await aio88(
            "create", "--prompt", "a fox", "--seconds", "4", "--json", env=env
        )
        video_id = events(out)[0]["id"]
        code, out, _ = await aio88("wait", video_id, env=env)
        assert code == 0 and "done" in out
        code, out, _ = await aio88("download", video_id, str(tmp_path / "v.mp4"), env=env)
        assert code == 0 and (tmp_path / "v.mp4").exists()
        code, _, _ = await aio88(
            "download", task_id, str(tmp_path / "g2.mp4"), "--kind", "generation", env=env
        )
        assert code == 0

        emu.fail(video_id)
        code, out, _ = await aio88("status", video_id, "--json", env=env)
        assert code == 1 and events(out)[0]["status"] == "failed"
        failing = emu.add_task(status="failed")
        code, out, _ = await aio88("wait", failing, env=env)
        assert code == 1 and "TaskFailedError" in out
        code, _, err = await aio88("create", "--kind", "generation", "--prompt", "x", env=env)
        assert code == 2 and "--model" in err
        code, _, err = await aio88("create", "--prompt", "x", "--duration", "3", env=env)
        assert code == 2 and "--seconds" in err
        code, _, err = await aio88(
            "create",
            "--kind",
            "generation",
            "--model",
            "m",
            "--prompt",
            "x",
            "--seconds",
            "3",
            env=env,
        )
        assert code == 2 and "--duration" in err
        code, _, err = await aio88("status", "task_missing", env=env)
        assert code == 1 and "NotFound" not in err and "Task not found" in err


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


def test_live_progress_line_on_a_terminal() -> None:
    """On a terminal the progress bar redraws in place with counts and bytes."""
    stream = FakeTerminal()
    printer = Printer(json_lines=False, quiet=False, stream=stream)
    tally = Tally(total=4, queued=1, running=1, done=1, failed=1, bytes=2_500_000)
    printer.progress(tally, force=True)
    text = stream.getvalue()
    assert text.startswith("\r[############............] 2/4")
    assert "queued 1  running 1  done 1  failed 1  2.5 MB" in text
    printer.event("done", id="t1")
    assert "\x1b[2K" in stream.getvalue()  # the line is cleared before results print
    plain = io.StringIO()
    Printer(json_lines=False, quiet=False, stream=plain).progress(tally, force=True)
    assert plain.getvalue() == ""  # not a terminal: no bar


def test_load_jobs_accepts_extras_and_comments(tmp_path: Path) -> None:
    """Comments and blank lines are skipped; unknown fields travel as extra_body."""
    jobs = tmp_path / "j.jsonl"
    jobs.write_text('# header\n\n{"prompt": "x", "resolution": "720P"}\n')
    [job] = load_jobs(jobs)
    assert job.kind == "video" and job.line == 3 and job.request["resolution"] == "720P"
    with pytest.raises(UsageError, match="not UTF-8"):
        (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe")
        load_jobs(tmp_path / "bin.jsonl")
