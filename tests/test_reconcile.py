"""``aio88 run --reconcile`` settles unconfirmed jobs from the dashboard's task list: the
matching (pure), the emulator's list (over loopback), and real ``aio88`` processes that
are killed, rerun and reconciled without paying twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from aio88._cli._jobs import load_jobs
from aio88._cli._reconcile import decide, matches
from aio88._dashboard import DashboardRefusedError, DashboardTask, decode_item, decode_page
from aio88._ledger import Job, Ledger
from aio88.testing import Emulator, Faults

AIO88 = [sys.executable, "-m", "aio88"]


def _task(
    task_id: str,
    *,
    at: int = 1000,
    model: str | None = "sora-2",
    prompt: str | None = "fox",
    metadata: dict[str, Any] | None = None,
) -> DashboardTask:
    return DashboardTask(
        task_id=task_id,
        submit_time=at,
        models=frozenset({model} if model else ()),
        prompt=prompt,
        metadata=metadata,
    )


def _job(key: str, prompt: str = "fox", *, since: float | None = 1000.0, **extra: Any) -> Job:
    request = {"model": "sora-2", "prompt": prompt, **extra}
    return Job(key, 1, "video", request, "unconfirmed", sending_since=since, sending_last=since)


# -- the matching, pure ------------------------------------------------------------------


def test_one_match_is_adopted_none_is_pending_two_stay_unconfirmed() -> None:
    jobs = [_job("a", "fox"), _job("b", "wolf"), _job("c", "owl")]
    tasks = [_task("t1", prompt="fox"), _task("t2", prompt="owl"), _task("t3", prompt="owl")]
    by_key = {d.key: d for d in decide(jobs, tasks, set(), now=5000.0, settle=120)}
    assert (by_key["a"].verdict, by_key["a"].task_id) == ("adopted", "t1")
    assert by_key["b"].verdict == "pending"
    assert by_key["c"].verdict == "unconfirmed" and by_key["c"].candidates == ("t2", "t3")
    assert "t2, t3" in by_key["c"].why


def test_a_task_another_job_owns_or_could_claim_is_never_adopted() -> None:
    # t1 is job x's already (the ledger knows it): it is no candidate.
    [decision] = decide([_job("a")], [_task("t1")], {"t1"}, now=5000.0, settle=120)
    assert decision.verdict == "pending"
    # One task, two unconfirmed jobs with the same prompt: neither takes it.
    decisions = decide([_job("a"), _job("b")], [_task("t1")], set(), now=5000.0, settle=120)
    assert [d.verdict for d in decisions] == ["unconfirmed", "unconfirmed"]
    assert all(d.candidates == ("t1",) for d in decisions)


def test_too_recent_or_unknown_send_time_stays_unconfirmed() -> None:
    [recent] = decide([_job("a", since=4950.0)], [], set(), now=5000.0, settle=120)
    assert recent.verdict == "unconfirmed" and "--reconcile after 120s" in recent.why
    [old] = decide([_job("a", since=None)], [_task("t1")], set(), now=5000.0, settle=120)
    assert old.verdict == "unconfirmed" and "older aio88" in old.why


def test_matching_uses_what_the_item_carries() -> None:
    job = _job("a", "fox", metadata={"order": 7})
    bounds = (900, 1100)
    assert matches(job, _task("t", prompt="fox", metadata={"order": 7}), bounds)
    assert not matches(job, _task("t", prompt="fox", metadata={"order": 8}), bounds)
    assert not matches(job, _task("t", prompt="wolf"), bounds)
    assert not matches(job, _task("t", model="veo-3"), bounds)
    assert not matches(job, _task("t", at=1200), bounds)
    # An item without prompt or model rules nothing out (an older server's item).
    assert matches(job, _task("t", prompt=None, model=None), bounds)


def test_items_of_both_server_versions_decode() -> None:
    fork = {
        "task_id": "task_a",
        "submit_time": 1700000000,
        "properties": {"input": "a fox", "origin_model_name": "sora-2"},
        "data": {"id": "x", "model": "sora-2-pro"},
    }
    upstream = {
        "task_id": "task_b",
        "submit_time": 1700000001,
        "properties": {"input": ""},
        "data": json.dumps({"model": "sora-2", "prompt": "a wolf", "metadata": {"k": 1}}),
    }
    a, b = decode_item(fork), decode_item(upstream)
    assert a is not None and a.prompt == "a fox" and a.models == {"sora-2", "sora-2-pro"}
    assert b is not None and b.prompt == "a wolf" and b.metadata == {"k": 1}
    assert decode_item({"submit_time": 1}) is None
    tasks, total, size = decode_page(
        json.dumps({"success": True, "data": {"items": None, "total": 0}}).encode()
    )
    assert (tasks, total, size) == ([], 0, None)
    with pytest.raises(DashboardRefusedError, match="token invalid"):
        # Older servers refuse with HTTP 200 and success: false.
        decode_page(b'{"success": false, "message": "token invalid"}')


# -- the emulator's list ---------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["docs", "newapi"])
async def test_the_emulator_serves_the_task_list(dialect: str) -> None:
    async with Emulator(dialect=dialect, duration=None) as emu:  # type: ignore[arg-type]
        ids = [emu.add_task(prompt=f"fox {i}") for i in range(25)]
        url = emu.base_url + "/api/task/self"
        good = {"Authorization": "Bearer dash-test", "New-Api-User": "1"}
        async with aiohttp.ClientSession() as session:
            for headers in (
                {"Authorization": f"Bearer {emu.api_key}", "New-Api-User": "1"},  # the key
                {"Authorization": "Bearer dash-test"},  # no user id
                {"Authorization": "dash-test", "New-Api-User": "2"},  # another user
            ):
                async with session.get(url, headers=headers) as resp:
                    assert resp.status == 401 and (await resp.json())["success"] is False
            async with session.post(emu.base_url + "/v1/videos", headers=good) as resp:
                assert resp.status == 401  # and the token is no API key
            now = emu.now_unix()
            seen: list[str] = []
            for page in (1, 2, 3):
                query = {"p": str(page), "page_size": "10", "start_timestamp": str(now - 5)}
                async with session.get(url, headers=good, params=query) as resp:
                    body = await resp.json()
                tasks, total, size = decode_page(json.dumps(body).encode())
                assert body["success"] and total == 25 and size == 10
                seen += [t.task_id for t in tasks]
                assert all(t.prompt and t.prompt.startswith("fox") for t in tasks)
            assert seen == ids[::-1]  # newest first, every one once
            query = {"end_timestamp": str(now - 100)}
            async with session.get(url, headers=good, params=query) as resp:
                assert (await resp.json())["data"]["total"] == 0


# -- real processes --------------------------------------------------------------------------


def _env(emu: Emulator, *, dashboard: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
    env.update(AIO88_API_KEY=emu.api_key, AIO88_BASE_URL=emu.base_url)
    if dashboard:
        env.update(AIO88_DASHBOARD_TOKEN=emu.dashboard_token, AIO88_USER_ID=str(emu.user_id))
    return env


def _jobs(path: Path, n: int) -> Path:
    lines = [{"kind": "video", "prompt": f"fox {i}", "key": f"job-{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


async def _aio88(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    result = await anyio.run_process([*AIO88, *args], env=env, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def _until(condition: Callable[[], bool], within: float = 20.0) -> None:
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - the emulator's state, no event to wait on
            await anyio.sleep(0.02)


def _unconfirmed(jobs_file: Path, out: Path, *, sent_ago: float) -> None:
    """A ledger whose every job was sent ``sent_ago`` seconds ago, its answer lost."""
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out)
    try:
        jobs = load_jobs(jobs_file)
        ledger.add_new(jobs)
        for job in jobs:
            ledger.set_state(job.key, "submitting")
            ledger.set_state(job.key, "unconfirmed", error="its answer was lost")
    finally:
        ledger.close()
    # The send times moved back, as if that run had been ``sent_ago`` seconds ago.
    db = sqlite3.connect(out / Ledger.FILE_NAME)
    with db:
        db.execute(
            "UPDATE jobs SET sending_since = sending_since - ?, sending_last = sending_last - ?",
            (sent_ago, sent_ago),
        )
    db.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_without_the_dashboard_credentials_nothing_is_sent(tmp_path: Path) -> None:
    jobs, out = _jobs(tmp_path / "jobs.jsonl", 2), tmp_path / "out"
    _unconfirmed(jobs, out, sent_ago=0)
    async with Emulator(duration=None) as emu:
        code, _, stderr = await _aio88(
            "run", str(jobs), "--out", str(out), "--reconcile", env=_env(emu, dashboard=False)
        )
        assert code == 2, stderr
        assert "AIO88_DASHBOARD_TOKEN and AIO88_USER_ID" in stderr
        assert "Traceback" not in stderr
        assert emu.requests == []
        env = {**_env(emu), "AIO88_DASHBOARD_TOKEN": "tok-Secret-42"}
        code, _, stderr = await _aio88("run", str(jobs), "--out", str(out), "--reconcile", env=env)
        assert code == 2 and "dashboard refused" in stderr, stderr
        assert "tok-Secret-42" not in stderr  # the token stays out of messages
        assert emu.creates == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_ambiguous_stays_unconfirmed_and_none_found_is_created_once(tmp_path: Path) -> None:
    jobs, out = _jobs(tmp_path / "jobs.jsonl", 2), tmp_path / "out"
    _unconfirmed(jobs, out, sent_ago=300)
    async with Emulator(duration=(0.05, 0.1), poll_after_ms=50, dialect="docs") as emu:
        twins = [emu.add_task(prompt="fox 0"), emu.add_task(prompt="fox 0")]  # job-0's twice
        code, stdout, stderr = await _aio88(
            "run", str(jobs), "--out", str(out), "--reconcile", "--json", env=_env(emu)
        )
        assert code == 1, stderr  # job-0 is left for a human
        records = _events(stdout)
        [created] = [e for e in records if e["event"] == "not_created"]
        assert created["key"] == "job-1"
        [left] = [e for e in records if e["event"] == "unconfirmed"]
        assert left["key"] == "job-0" and all(t in left["error"] for t in twins)
        assert emu.creates == 1  # job-1, once; nothing for job-0
        assert Counter(t.prompt for t in emu.tasks.values()) == {"fox 0": 2, "fox 1": 1}
        # The dashboard saw the token and the user id, never the key; the API, the key.
        listed = [r for r in emu.requests if r.path == "/api/task/self"]
        assert listed and all(r.authorization == "Bearer dash-test" for r in listed)
        assert all(r.headers.get("new-api-user") == "1" for r in listed)
        others = [r for r in emu.requests if r.origin == "api" and r.path != "/api/task/self"]
        assert all(r.authorization == f"Bearer {emu.api_key}" for r in others)
    assert len(list((out / "videos").glob("*.mp4"))) == 1


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_faulty_batch_killed_then_reconciled_pays_once(tmp_path: Path) -> None:
    """Lost answers (dropped and cut), ``kill -9`` while creates wait for their answers,
    then a rerun with ``--reconcile``: every job downloaded exactly once, one task per job,
    none created twice."""
    total = 60
    jobs, out = _jobs(tmp_path / "jobs.jsonl", total), tmp_path / "out"
    async with Emulator(duration=(0.05, 0.2), poll_after_ms=50, dialect="newapi") as emu:
        env = _env(emu)
        argv = [*AIO88, "run", str(jobs), "--out", str(out), "--create-concurrency", "4"]
        silent = subprocess.DEVNULL
        async with await anyio.open_process(argv, env=env, stdout=silent, stderr=silent) as process:
            # Lost answers once creates work (before, they would stop the run as a set-up
            # problem): two dropped before the server took them, two cut after.
            await _until(lambda: len(emu.tasks) >= 5, within=60)
            emu.inject("drop", times=2, method="POST")
            emu.inject("truncate", times=2, method="POST")
            await _until(lambda: len(emu.tasks) >= total // 2, within=60)
            emu.faults.latency = 30.0  # every answer held: the creates in flight are lost
            await _until(lambda: emu.in_flight >= 2)
            process.kill()
            assert await process.wait() == -signal.SIGKILL
        emu.faults = Faults()  # the held creates are now stored, their answers gone
        await _until(lambda: emu.in_flight == 0, within=40)
        faults = Counter(r.fault for r in emu.requests if r.method == "POST")
        assert faults["drop"] == faults["truncate"] == 2

        code, stdout, stderr = await _aio88(
            "run",
            str(jobs),
            "--out",
            str(out),
            "--reconcile",
            "--settle",
            "0",
            "--json",
            env=env,
        )
        assert code == 0, stderr
        records = _events(stdout)
        adopted = [e for e in records if e["event"] == "adopted"]
        assert adopted  # the held and the cut answers' tasks
        assert len({e["id"] for e in adopted}) == len(adopted)
    # One task per job, each downloaded once.
    per_prompt = Counter(task.prompt for task in emu.tasks.values())
    assert len(per_prompt) == total and max(per_prompt.values()) == 1
    assert len(emu.tasks) == total
    assert len(list((out / "videos").glob("*.mp4"))) == total
    ledger = Ledger(out, lock=False)
    try:
        assert ledger.counts() == {"downloaded": total}
    finally:
        ledger.close()
