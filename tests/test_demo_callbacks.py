"""``aio88 demo --callbacks``: the demo's tasks end by their callbacks (one GET each), and
the figure it gives for polling alone is what the poller itself does."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from clocks import WatchedClock, settle

from aio88 import Client, Schedule, Video
from aio88._cli._demo import demo, polls_without_callbacks
from aio88._cli._main import build_parser
from aio88._cli._output import EXIT_FAILED, EXIT_OK, Printer
from aio88.testing import Dialect, EmulatedTask, Emulator


async def run_demo(*flags: str) -> tuple[int, list[dict[str, Any]]]:
    """``aio88 demo FLAGS --json`` in this process: its exit code and JSON lines."""
    args = build_parser().parse_args(["demo", *flags, "--json"])
    stream = io.StringIO()
    code = await demo(args, Printer(json_lines=True, stream=stream))
    return code, [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_demo_with_callbacks_polls_each_task_once(tmp_path: Path) -> None:
    code, events = await run_demo(
        "--callbacks", "--tasks", "6", "--duration", "0.2", "0.5", "--out", str(tmp_path)
    )
    assert code == EXIT_OK
    [receiver] = [e for e in events if e["event"] == "receiver"]
    assert receiver["url"].startswith("http://127.0.0.1:")
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["tasks"] == summary["succeeded"] == 6
    # Schedule.fallback's first poll is a minute away: each end came by its callback.
    assert summary["callbacks"] == 6 and summary["polls"] == 6
    assert summary["polls_per_task"] == 1.0
    # Polling alone: the default schedule's first poll (2 s) sees each task ended.
    assert summary["polls_polling_only"] == 6
    expected = (summary["requests"] - 6 + 6) / 6
    assert summary["requests_per_task_polling_only"] == round(expected, 1)
    assert len(await anyio.to_thread.run_sync(lambda: list(tmp_path.glob("*.mp4")))) == 6


async def test_failed_tasks_end_by_their_callbacks_too(tmp_path: Path) -> None:
    code, events = await run_demo(
        "--callbacks",
        "--tasks",
        "6",
        "--duration",
        "0.2",
        "0.4",
        "--failure-rate",
        "0.5",
        "--seed",
        "3",
        "--out",
        str(tmp_path),
    )
    summary = events[-1]
    assert code == EXIT_FAILED and 0 < summary["failed"] < 6
    assert summary["callbacks"] == 6 and summary["polls"] == 6


def test_polling_alone_counts_the_polls_of_a_schedule() -> None:
    task = EmulatedTask(
        id="task_x",
        kind="video",
        model="sora-2",
        prompt="p",
        created=0.0,
        queued_for=1.0,
        run_for=9.0,
        will_fail=False,
        request={},
        row_id=1,
    )
    # Every 3 s, the first 3 s after the create: at 3, 6, 9 (running), 12 (ended at 10).
    assert polls_without_callbacks(task, Schedule.fixed(3.0), progress=True) == 4


@pytest.mark.parametrize("dialect", ["newapi", "docs"])
async def test_the_polling_alone_figure_is_what_the_poller_does(dialect: Dialect) -> None:
    """The demo's estimate for polling alone replays the poller's own decisions: without
    jitter, a real watch on a manual clock makes exactly as many polls per task."""
    schedule = Schedule(jitter=0.0)
    clock = WatchedClock()
    async with (
        Emulator(clock=clock, duration=(20.0, 300.0), seed=5, dialect=dialect) as emu,
        Client(api_key=emu.api_key, base_url=emu.base_url) as client,
    ):
        tasks = [await client.videos.create(prompt=f"fox {n}") for n in range(3)] + [
            await client.generations.create(model="kling-v1", prompt=f"wolf {n}") for n in range(3)
        ]
        async with client.watch([], schedule=schedule, clock=clock) as outcomes:
            outcomes.add(tasks, fresh=True)
            with anyio.fail_after(10):
                while True:
                    await settle(outcomes.stats, clock)
                    if outcomes.stats().finished == len(tasks):
                        break
                    clock.advance(min(clock.sleeping) - clock.now())
                ended = [outcome async for outcome in outcomes]
        assert len(ended) == len(tasks)
        for task in tasks:
            video = isinstance(task, Video)
            made = emu.count("GET", f"/v1/{'videos' if video else 'video/generations'}/{task.id}")
            progress = video or dialect == "newapi"  # the docs' generations report none
            estimate = polls_without_callbacks(emu.tasks[task.id], schedule, progress=progress)
            assert made == estimate, task.id
