"""Every benchmark runs at a tiny size, so the scripts never rot. Nothing is timed here.

The scripts run as they are run by hand, ``python -m benchmarks.<script>`` from the
checkout: nothing in ``tests/`` imports ``benchmarks/``. They are skipped where there is no
``benchmarks/`` (the sdist), and the ones that compare against openai-python when the
``bench`` extra (openai, httpx-aiohttp) is not installed. Every selected run starts at once
in the background of the module (see ``side_by_side.py``); each test checks its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from side_by_side import SideBySide, side_by_side

ROOT = Path(__file__).parent.parent

pytestmark = [
    pytest.mark.slow,  # each runs the script in its own process, some of them several
    pytest.mark.timeout(90),  # ... and they all run at once
    pytest.mark.skipif(
        not (ROOT / "benchmarks" / "__init__.py").is_file(),
        reason="needs the checkout's benchmarks/ folder (not shipped in the sdist)",
    ),
]

#: The bench extra's modules that are not installed.
MISSING = [name for name in ("openai", "httpx_aiohttp") if importlib.util.find_spec(name) is None]
needs_bench_extra = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs the bench extra (pip install -e '.[bench]'): {', '.join(MISSING)} missing",
)
needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None, reason="the download benchmark needs nginx (.ci/run installs it)"
)


async def bench(script: str, *args: str) -> str:
    """Run ``python -m benchmarks.<script> <args>`` from the checkout; its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
    result = await anyio.run_process(
        [sys.executable, "-m", f"benchmarks.{script}", *args], cwd=ROOT, env=env, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    return result.stdout.decode()


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every Markdown table in ``text``, as lists of cell texts."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("x"))


#: What each test runs: ``(script, args)`` pairs, by test name.
RUNS: dict[str, list[tuple[str, list[str]]]] = {
    "test_bench_schedule_smoke": [
        ("bench_schedule", ["--tasks", "20", "--seed", "1", "--json"]),
        ("bench_schedule", ["--tasks", "5"]),
    ],
    "test_bench_schedule_callbacks": [
        ("bench_schedule", ["--tasks", "40", "--seed", "1", "--json"])
    ],
    "test_bench_scale_smoke": [
        ("bench_scale", ["--sizes", "200", "--json"]),
        ("bench_scale", ["--sizes", "50"]),
    ],
    "test_bench_decode_smoke": [
        ("bench_decode", ["--number", "20", "--json"]),
        ("bench_decode", ["--number", "20"]),
    ],
    "test_bench_download_smoke": [
        (
            "bench_download",
            [
                *("--sizes", "1", "--rounds", "1", "--chunks", str(1 << 20)),
                *("--clients", "aio88", "openai-default", "aio88-session"),
            ],
        )
    ],
    "test_bench_poll_smoke": [("bench_poll", ["-n", "50", "-c", "8", "--rounds", "1"])],
    "test_bench_congestion_smoke": [
        (
            "bench_congestion",
            ["-n", "8", "--duration", "0.2", "0.4", "--clients", "aio88", "--json"],
        ),
    ],
}


def runs_of(name: str) -> Callable[[], Awaitable[list[str]]]:
    """The test's runs, one after the other: their outputs."""

    async def run() -> list[str]:
        return [await bench(script, *args) for script, args in RUNS[name]]

    return run


@pytest.fixture(scope="module")
async def outputs(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[SideBySide]:
    """Every selected test's runs, started at once in the background."""
    selected = {
        item.name
        for item in request.session.items
        if item.path == request.path
        and not any(mark.args and mark.args[0] for mark in item.iter_markers("skipif"))
    }
    async with side_by_side() as background:
        for name in RUNS:
            if name in selected:
                background.start(name, runs_of(name))
        yield background


async def test_bench_schedule_smoke(outputs: SideBySide) -> None:
    """The schedule simulation runs every policy and model and renders its table."""
    report, table = await outputs.result("test_bench_schedule_smoke")
    results = json.loads(report)
    assert {r["model"] for r in results} == {"linear", "curved", "stepped", "none"}
    assert all(r["requests_per_task"] >= 1 and r["mean_delay"] >= 0 for r in results)
    assert "docs tiers" in table and "requests/task" in table
    assert "callbacks, 20% lost" in table and "fallback bound" in table
    # Each target printed, met or missed.
    assert sum(line.startswith(("- met: ", "- MISSED: ")) for line in table.splitlines()) == 4


async def test_bench_schedule_callbacks(outputs: SideBySide) -> None:
    """With callbacks a task costs fewer requests than any polling schedule and is seen
    sooner than with the docs' tiers; lost callbacks are caught by the fallback polls."""
    (report,) = await outputs.result("test_bench_schedule_callbacks")
    results = json.loads(report)
    polling = [r for r in results if not r["callbacks"]]
    callbacks = [r for r in results if r["callbacks"]]
    assert {(r["lost_share"], r["flaky"]) for r in callbacks} == {
        (0.0, 0.0),
        (0.0, 0.05),
        (0.05, 0.0),
        (0.2, 0.0),
    }
    cheapest_poll = min(r["requests_per_task"] for r in polling)
    docs = {r["model"]: r for r in polling if r["policy"] == "docs tiers"}
    for r in callbacks:
        assert r["finished"] == r["tasks"] == 40
        assert r["requests_per_task"] < cheapest_poll
        if r["lost_share"] == 0:
            assert r["lost"] == 0 and r["lost_max_delay"] is None
            assert r["mean_delay"] < docs[r["model"]]["mean_delay"]
            # at most the fallback's polls plus one GET per callback
            assert r["requests_per_task"] <= r["fallback_per_task"] + 1
        if r["lost"]:
            assert r["lost_max_delay"] <= r["lost_bound"]
    # One draw per task decides the loss: the 5 % lost are among the 20 % lost.
    lost = {r["lost_share"]: r["lost"] for r in callbacks if r["model"] == "linear"}
    assert lost[0.0] <= lost[0.05] <= lost[0.2]


async def test_bench_scale_smoke(outputs: SideBySide) -> None:
    """The scale benchmark measures memory and scheduler CPU at a small size."""
    report, table = await outputs.result("test_bench_scale_smoke")
    results = json.loads(report)
    assert results[0]["bytes_per_task"] > 0
    assert results[0]["polls"] == 600
    assert "tracked tasks" in table


@needs_bench_extra
async def test_bench_decode_smoke(outputs: SideBySide) -> None:
    """The decode benchmark times every shape with every decoder."""
    report, table = await outputs.result("test_bench_decode_smoke")
    rows = json.loads(report)
    shapes = [r["shape"] for r in rows]
    assert len(shapes) == len(set(shapes)) >= 4
    assert all(r["aio88"] > 0 and r["json.loads"] > 0 for r in rows)
    assert any("json.loads + openai Video" in r for r in rows)
    assert "aio88 vs openai" in table
    assert [row[0] for row in table_rows(table)[1:]] == shapes


@needs_bench_extra
@needs_nginx
async def test_bench_download_smoke(outputs: SideBySide) -> None:
    """The download benchmark runs every client once on a tiny file and checks each copy."""
    [table] = await outputs.result("test_bench_download_smoke")
    assert "MB/s" in table
    rows = table_rows(table)
    by_client = [row for row in rows if row[0] == "1 MiB"]
    assert {row[1] for row in by_client} == {"aio88", "openai-default", "aio88-session"}
    assert all(number(row[2]) > 0 for row in by_client)  # best MB/s
    [sweep] = [row for row in rows if row[0] == "1024 KiB"]
    assert number(sweep[1]) > 0


@needs_bench_extra
async def test_bench_poll_smoke(outputs: SideBySide) -> None:
    """The poll benchmark runs every client (nginx, or the emulator when it is missing)."""
    [table] = await outputs.result("test_bench_poll_smoke")
    assert "aio88 is faster by" in table
    rows = table_rows(table)[1:]  # past the header row
    assert {row[0] for row in rows} == {
        "aio88",
        "openai-default",
        "openai-aiohttp",
        "aiohttp-plain",
    }
    assert all(number(row[1]) > 0 for row in rows)  # requests/s


async def test_bench_congestion_smoke(outputs: SideBySide) -> None:
    """The congestion benchmark runs every scenario; aio88 loses no task and starts no
    request during a pause the server asked for."""
    (report,) = await outputs.result("test_bench_congestion_smoke")
    runs = json.loads(report)
    assert [(r["rate_429"], r["retry_after"]) for r in runs] == [
        (0.0, None),
        (0.05, None),
        (0.05, 1.0),
        (0.2, None),
        (0.2, 1.0),
    ]
    assert all(r["errors"] == 0 and r["requests"] >= 8 for r in runs)
    # (At most a stray one: on a loaded machine a request can start between a 429's head
    # arriving and the client reading it, longer than the script's grace.)
    assert all(r["during_pauses"] <= 1 for r in runs if r["retry_after"] is not None)
    assert all(r["concurrency"] for r in runs)


async def test_bench_fleet_smoke(postgres_dsn: str) -> None:
    """The fleet benchmark runs its worker processes on a real PostgreSQL: the baseline
    and the fleet poll the tasks, and the rate budget's requests are counted."""
    args = ["--dsn", postgres_dsn, "--tasks", "20", "--seconds", "1", "--warmup", "0.2"]
    args += ["--workers", "2", "--rates", "20", "--rate-seconds", "2", "--json"]
    report = json.loads(await bench("bench_fleet", *args))
    base, fleet = report["polling"]
    assert (base["fleet"], base["processes"], fleet["fleet"], fleet["processes"]) == (
        False,
        1,
        True,
        2,
    )
    assert base["polls"] > 0 and fleet["polls"] > 0
    assert base["errors"] == fleet["errors"] == 0
    assert sum(fleet["polls_by_process"]) == fleet["polls"]  # each task by its holder only
    [limited] = report["rates"]
    assert limited["rate"] == 20 and limited["requests"] > 0
    assert limited["first_second"] > 0 and limited["worst_window_after"] >= 0
    assert {200} >= set(limited["statuses"])
