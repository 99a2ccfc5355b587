"""``aio88 run --reconcile`` settles unconfirmed jobs from the dashboard's task list: the
matching (pure), the emulator's list (over loopback), and real ``aio88`` processes that
are killed, rerun and reconciled without paying twice."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from aio88._cli._jobs import load_jobs
from aio88._cli._output import Printer
from aio88._cli._reconcile import (
    dashboard_credentials,
    decide,
    identifies,
    matches,
    narrow_window,
    normalise_prompt,
    reconcile,
    settle_seconds,
    wide_window,
)
from aio88._dashboard import (
    DashboardRefusedError,
    DashboardTask,
    Listing,
    dashboard_transport,
    decode_item,
    decode_page,
    list_tasks,
)
from aio88._ledger import Job, Ledger
from aio88.testing import Emulator, Faults
from aio88.testing._arguments import UsageError

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
    request: dict[str, Any] = {"model": "sora-2", "prompt": prompt, **extra}
    return Job(key, 1, "video", request, "unconfirmed", sending_since=since, sending_last=since)


# -- the matching, pure ------------------------------------------------------------------

# A job sent at 1000: its create could be stored until 1000 + 70 (api_deadline) + settle.
NOW = 5000.0


def test_one_match_is_adopted_none_is_pending_two_stay_unconfirmed() -> None:
    jobs = [_job("a", "fox"), _job("b", "wolf", model="veo-3"), _job("c", "owl")]
    tasks = [_task("t1", prompt="fox"), _task("t2", prompt="owl"), _task("t3", prompt="owl")]
    by_key = {d.key: d for d in decide(jobs, tasks, set(), now=NOW, settle=120)}
    assert (by_key["a"].verdict, by_key["a"].task_id) == ("adopted", "t1")
    assert by_key["b"].verdict == "pending"  # no veo-3 task at all
    assert by_key["c"].verdict == "unconfirmed" and by_key["c"].candidates == ("t2", "t3")
    assert "t2, t3" in by_key["c"].why


def test_a_task_another_job_owns_or_could_claim_is_never_adopted() -> None:
    # t1 is job x's already (the ledger knows it): it is no candidate.
    [decision] = decide([_job("a")], [_task("t1")], {"t1"}, now=NOW, settle=120)
    assert decision.verdict == "pending"
    # One task, two unconfirmed jobs with the same prompt: neither takes it.
    decisions = decide([_job("a"), _job("b")], [_task("t1")], set(), now=NOW, settle=120)
    assert [d.verdict for d in decisions] == ["unconfirmed", "unconfirmed"]
    assert all(d.candidates == ("t1",) for d in decisions)


def test_too_recent_or_unknown_send_time_stays_unconfirmed() -> None:
    # Sent 50 s ago: its create's deadline (70 s) and --settle have not passed.
    [recent] = decide([_job("a", since=NOW - 50)], [], set(), now=NOW, settle=120)
    assert recent.verdict == "unconfirmed" and "rerun with --reconcile after 140s" in recent.why
    # Past --settle counted from the last send, not from its deadline: still too early.
    [early] = decide([_job("a", since=NOW - 130)], [], set(), now=NOW, settle=120)
    assert early.verdict == "unconfirmed"
    [old] = decide([_job("a", since=None)], [_task("t1")], set(), now=NOW, settle=120)
    assert old.verdict == "unconfirmed" and "older aio88" in old.why


def test_a_job_with_no_send_time_still_claims_its_task() -> None:
    # The older ledger's job "old" has fox's prompt too: the newer job cannot take t1.
    jobs = [_job("old", since=None), _job("new")]
    decisions = decide(jobs, [_task("t1")], set(), now=NOW, settle=120)
    assert [d.verdict for d in decisions] == ["unconfirmed", "unconfirmed"]
    assert decisions[0].candidates == ("t1",) and "t1" in decisions[1].why


def test_an_item_without_prompt_or_metadata_is_never_adopted() -> None:
    bare = _task("t1", prompt=None, model=None)
    # Nothing in the item says whose it is: not adopted on its time alone, and since it
    # could be the job's, not created again either.
    [decision] = decide([_job("a")], [bare], set(), now=NOW, settle=120)
    assert decision.verdict == "unconfirmed" and decision.candidates == ("t1",)
    # A job naming no model, against an item of some model and no prompt: the same.
    job = Job("a", 1, "video", {"prompt": "fox"}, "unconfirmed", sending_since=1000.0)
    [decision] = decide([job], [_task("t1", prompt=None)], set(), now=NOW, settle=120)
    assert decision.verdict == "unconfirmed" and decision.candidates == ("t1",)
    assert not identifies(job, _task("t1", prompt=None))


def test_a_normalised_prompt_or_stringified_metadata_still_identifies() -> None:
    job = _job("a", "  A fox\n in  the snow ", metadata={"order": 7, "hd": True})
    assert normalise_prompt(job.request["prompt"]) == "a fox in the snow"
    stored = _task("t1", prompt="a Fox in the snow", metadata={"order": "7", "hd": "true"})
    assert identifies(job, stored)
    [decision] = decide([job], [stored], set(), now=NOW, settle=120)
    assert (decision.verdict, decision.task_id) == ("adopted", "t1")
    # Metadata alone identifies when the item has no prompt; a different value rules out.
    assert identifies(job, _task("t", prompt=None, metadata={"order": 7, "hd": True}))
    assert not identifies(job, _task("t", prompt="a fox in the snow", metadata={"order": 8}))
    assert not identifies(job, _task("t", prompt="a wolf"))
    assert not identifies(job, _task("t", prompt="a fox in the snow", model="veo-3"))
    # A prompt that differs (a server that rewrites it) is not adopted, and the task of the
    # same model keeps the job from being created again.
    [decision] = decide([job], [_task("t1", prompt="fox, snow")], set(), now=NOW, settle=120)
    assert decision.verdict == "unconfirmed" and decision.candidates == ("t1",)


def test_another_ledgers_task_on_the_account_keeps_a_job_unconfirmed() -> None:
    # Another aio88 (another ledger, same account) made t9 with the same model: it is no
    # match for "a", but could be "a"'s own under a rewritten prompt.
    foreign = _task("t9", prompt="an unrelated prompt", at=1500)
    [decision] = decide([_job("a")], [foreign], set(), now=NOW, settle=120)
    assert decision.verdict == "unconfirmed" and "t9" in decision.why
    # Of another model: it rules nothing out.
    other = _task("t9", prompt="an unrelated prompt", at=1500, model="veo-3")
    [decision] = decide([_job("a")], [other], set(), now=NOW, settle=120)
    assert decision.verdict == "pending"
    # An item naming no model could be of any.
    [decision] = decide([_job("a")], [_task("t9", model=None, at=1500)], set(), NOW, settle=120)
    assert decision.verdict == "unconfirmed"


def test_the_adoption_window_ends_at_the_create_deadline_plus_settle() -> None:
    job = _job("a")  # sent at 1000
    low, high = narrow_window(job, settle=120)
    assert (low, high) == (1000 - 60, 1000 + 70 + 120 + 60)
    assert wide_window(job, NOW) == (940, NOW + 60)
    # Later than the deadline: not adopted on the prompt, but not "never created" either.
    late = _task("t1", at=int(high) + 1)
    assert not matches(job, late, settle=120)
    [decision] = decide([job], [late], set(), now=NOW, settle=120)
    assert decision.verdict == "unconfirmed" and decision.candidates == ("t1",)
    assert matches(job, _task("t1", at=int(high)), settle=120)


def test_the_servers_clock_shifts_the_windows_and_must_be_known_for_pending() -> None:
    job = _job("a")
    # The server's clock 90 s ahead: its submit_time 1100 is our 1010.
    ahead = _task("t1", at=1000 + 70 + 120 + 60 + 90)
    [decision] = decide([job], [ahead], set(), NOW, settle=120, clock_offset=90.0)
    assert (decision.verdict, decision.task_id) == ("adopted", "t1")
    # No task, but the clock is unmeasured, or off by more than the allowance: never
    # pending.
    for offset, said in ((None, "no Date header"), (90.0, "+90s off ours")):
        [decision] = decide([job], [], set(), NOW, settle=120, clock_offset=offset)
        assert decision.verdict == "unconfirmed" and said in decision.why
    [decision] = decide([job], [], set(), NOW, settle=120, clock_offset=30.0)
    assert decision.verdict == "pending"
    [decision] = decide([job], [], set(), NOW, settle=120, complete=False, why_incomplete="x")
    assert decision.verdict == "unconfirmed" and "incomplete" in decision.why


def test_settle_must_be_finite_seconds() -> None:
    assert settle_seconds("0") == 0.0 and settle_seconds("90.5") == 90.5
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            settle_seconds(bad)


def test_the_user_id_is_ascii_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIO88_DASHBOARD_TOKEN", "tok")
    monkeypatch.setenv("AIO88_USER_ID", "\u0661\u0662")  # Arabic-Indic digits: isdigit()
    with pytest.raises(UsageError, match="ASCII digits"):
        dashboard_credentials()
    monkeypatch.setenv("AIO88_USER_ID", "12")
    assert dashboard_credentials() == ("tok", "12")


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
    page = decode_page(json.dumps({"success": True, "data": {"items": None, "total": 0}}).encode())
    assert (page.tasks, page.total, page.size, page.raw, page.page) == ([], 0, None, 0, None)
    with pytest.raises(DashboardRefusedError, match="token invalid") as refused:
        # Older servers refuse with HTTP 200 and success: false.
        decode_page(b'{"success": false, "message": "token invalid"}')
    assert refused.value.server_message == "token invalid"


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
                page_ = decode_page(json.dumps(body).encode())
                assert body["success"] and page_.total == 25 and page_.size == 10
                seen += [t.task_id for t in page_.tasks]
                assert all(t.prompt and t.prompt.startswith("fox") for t in page_.tasks)
            assert seen == ids[::-1]  # newest first, every one once
            query = {"end_timestamp": str(now - 100)}
            async with session.get(url, headers=good, params=query) as resp:
                assert (await resp.json())["data"]["total"] == 0


# -- the listing, over loopback ---------------------------------------------------------------


def _item(task_id: str | None, at: int, prompt: str = "fox") -> dict[str, Any]:
    item: dict[str, Any] = {"submit_time": at, "properties": {"input": prompt}}
    if task_id is not None:
        item["task_id"] = task_id
    item["data"] = {"model": "sora-2"}
    return item


Handler = Callable[[web.Request], Awaitable[web.Response]]


async def _served(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/api/task/self", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _listing(handler: Handler, *, page_size: int = 3) -> Listing:
    async for base in _served(handler):
        transport = dashboard_transport(base, "tok", "7")
        try:
            return await list_tasks(transport, start=0, end=2**31, page_size=page_size)
        finally:
            await transport.aclose()
    raise AssertionError("not served")


def _pages(
    items: list[dict[str, Any]], *, echo: Callable[[int], int | None] = lambda p: p
) -> Handler:
    """A dashboard serving ``items`` by pages as asked, echoing ``echo(page)``."""

    async def handler(request: web.Request) -> web.Response:
        page, size = int(request.query["p"]), int(request.query["page_size"])
        data: dict[str, Any] = {
            "page_size": size,
            "total": len(items),
            "items": items[(page - 1) * size : page * size],
        }
        if (echoed := echo(page)) is not None:
            data["page"] = echoed
        return web.json_response({"success": True, "data": data})

    return handler


async def test_a_servers_clock_off_by_90s_is_measured_and_no_job_returns_to_pending() -> None:
    now = time.time()
    at = int(now) + 90  # the server's clock: 90 s ahead of ours

    async def handler(request: web.Request) -> web.Response:
        data = {"page": 1, "page_size": 3, "total": 1, "items": [_item("t1", at - 30, "owl")]}
        body = {"success": True, "data": data}
        date = format_datetime(datetime.fromtimestamp(time.time() + 90, timezone.utc), usegmt=True)
        return web.json_response(body, headers={"Date": date})

    listing = await _listing(handler)
    assert listing.complete and listing.clock_offset is not None
    assert abs(listing.clock_offset - 90) <= listing.clock_error + 0.5
    # "fox" was sent 300 s ago: by our clock, owl's task is after its window, but the
    # server's clock is off by more than the allowance: it is never created again.
    fox = _job("fox", since=now - 300)
    offset, error = listing.clock_offset, listing.clock_error
    [decision] = decide(
        [fox], listing.tasks, set(), now, settle=0, clock_offset=offset, clock_error=error
    )
    assert decision.verdict == "unconfirmed" and "t1" in decision.why
    [decision] = decide([fox], [], set(), now, settle=0, clock_offset=offset, clock_error=error)
    assert decision.verdict == "unconfirmed" and "+90s off ours" in decision.why
    # The owl job, sent 30 s ago by the server's clock: adopted once the clock is shifted.
    owl = _job("owl", "owl", since=now - 30)
    [decision] = decide(
        [owl], listing.tasks, set(), now, settle=0, clock_offset=offset, clock_error=error
    )
    assert (decision.verdict, decision.task_id) == ("adopted", "t1")


async def test_pages_are_short_by_raw_items_and_a_server_not_paging_is_incomplete() -> None:
    items = [_item(f"t{i}", 1000 - i) for i in range(7)]
    items[2].pop("task_id")  # a full first page with an item without id: not the last
    listing = await _listing(_pages(items))
    assert listing.complete and len(listing.tasks) == 6
    assert listing.clock_offset is not None  # aiohttp's own Date header
    # A server that ignores "p" (page 1 every time) or counts pages from 0.
    for echo in (lambda p: 1, lambda p: p - 1):
        listing = await _listing(_pages(items, echo=echo))
        assert not listing.complete and "asked for" in listing.why_incomplete
    # One that echoes no page and serves the first page again: no new ids, incomplete.

    async def again(request: web.Request) -> web.Response:
        data = {"page_size": 3, "total": 7, "items": items[:3]}
        return web.json_response({"success": True, "data": data})

    listing = await _listing(again)
    assert not listing.complete and "no task not seen" in listing.why_incomplete
    assert len(listing.tasks) == 2
    # Ends short of its total: incomplete.
    listing = await _listing(_short(items))
    assert not listing.complete and "ended with" in listing.why_incomplete


def _short(items: list[dict[str, Any]]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        page = int(request.query["p"])
        chunk = items[(page - 1) * 3 : page * 3] if page == 1 else items[3:4]
        data = {"page": page, "page_size": 3, "total": 7, "items": chunk}
        return web.json_response({"success": True, "data": data})

    return handler


async def test_a_task_created_between_pages_is_kept_once() -> None:
    items = [_item(f"t{i}", 1000 - i) for i in range(7)]

    async def handler(request: web.Request) -> web.Response:
        answer = await _pages(items)(request)
        if request.query["p"] == "1":
            items.insert(0, _item("new", 2000))  # newest first: every item moves down one
        return answer

    listing = await _listing(handler)
    ids = [t.task_id for t in listing.tasks]
    assert len(ids) == len(set(ids)) == 7 and "new" not in ids
    # The new one was missed (it went to page 1, already read): the listing says so.
    assert not listing.complete


async def test_the_emulator_caps_its_pages_and_every_task_is_listed() -> None:
    async with Emulator(duration=None) as emu:
        ids = {emu.add_task(prompt=f"fox {i}") for i in range(230)}
        transport = dashboard_transport(emu.base_url, emu.dashboard_token, str(emu.user_id))
        try:
            listing = await list_tasks(transport, start=0, end=2**31, page_size=500)
        finally:
            await transport.aclose()
        listed = [r for r in emu.requests if r.path == "/api/task/self"]
    assert listing.complete and {t.task_id for t in listing.tasks} == ids
    assert len(listed) == 3  # 100 a page at most, as new-api serves


async def test_a_refusal_for_another_reason_says_the_servers_message(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"success": False, "message": "start_timestamp too old"})

    out = tmp_path / "out"
    _unconfirmed(_jobs(tmp_path / "jobs.jsonl", 1), out, sent_ago=300)
    async for base in _served(handler):
        ledger = Ledger(out)
        try:
            printer = Printer(json_lines=True)
            with pytest.raises(UsageError, match="start_timestamp too old") as refused:
                await reconcile(ledger, base, ("tok", "7"), printer, settle=0)
        finally:
            ledger.close()
    assert "refused" not in str(refused.value)
    ledger = Ledger(out)
    try:
        with pytest.raises(UsageError, match="space or a line break") as bad:
            await reconcile(ledger, base, ("tok Secret", "7"), printer, settle=0)
    finally:
        ledger.close()
    assert "Secret" not in str(bad.value)


# -- real processes --------------------------------------------------------------------------


def _env(emu: Emulator, *, dashboard: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
    env.update(AIO88_API_KEY=emu.api_key, AIO88_BASE_URL=emu.base_url)
    if dashboard:
        env.update(AIO88_DASHBOARD_TOKEN=emu.dashboard_token, AIO88_USER_ID=str(emu.user_id))
    return env


def _jobs(path: Path, n: int, models: tuple[str, ...] = ("sora-2",)) -> Path:
    lines = [
        {"kind": "video", "model": models[i % len(models)], "prompt": f"fox {i}", "key": f"job-{i}"}
        for i in range(n)
    ]
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
    _sent_earlier(out, sent_ago)


def _sent_earlier(out: Path, seconds: float) -> None:
    """Move the ledger's send times ``seconds`` back."""
    db = sqlite3.connect(out / Ledger.FILE_NAME)
    with db:
        db.execute(
            "UPDATE jobs SET sending_since = sending_since - ?, sending_last = sending_last - ?",
            (seconds, seconds),
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
        assert "set AIO88_DASHBOARD_TOKEN (" in stderr and ") and AIO88_USER_ID (" in stderr
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
    # job-1 is of another model than job-0's twins: they cannot be its task.
    jobs, out = _jobs(tmp_path / "jobs.jsonl", 2, ("sora-2", "sora-2-pro")), tmp_path / "out"
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
        # The rerun comes two minutes later, once every create lost has passed its
        # deadline (70 s): none can be stored any more.
        _sent_earlier(out, 120)

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
        assert code == 0, stderr + stdout
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
