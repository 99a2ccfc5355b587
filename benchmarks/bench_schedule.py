"""Requests per task and detection delay: the docs' schedule vs progress-aware vs fixed 1 s.

A discrete-event simulation on a manual clock. Each task follows the emulator's own
lifecycle code (``aio88.testing.EmulatedTask``): queued for 5-30 % of its duration, then
in progress until it ends; durations are log-uniform from 30 s to 10 min. Each policy
decides every delay through ``aio88._schedule.plan_delay``, the function the Poller runs.

Progress models (what the server reports while a task runs):

- ``linear``: the emulator's own, progress proportional to time;
- ``curved``: progress = x**g with g from 0.5 to 2 (fast then slow, or slow then fast);
- ``stepped``: curved, then rounded down to 10 % steps (coarse vendors);
- ``none``: no progress at all (the docs' /v1/video/generations shape).

Detection delay is the time from the task ending on the server to the poll that sees it.

    python -m benchmarks.bench_schedule [--tasks 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from aio88 import Schedule, Status
from aio88._schedule import plan_delay
from aio88.testing import EmulatedTask

MIN_DURATION, MAX_DURATION = 30.0, 600.0

Observe = Callable[[float], tuple[Status, int | None]]


@dataclass
class _State:
    """A simulated task's polling state, as :func:`plan_delay` reads and updates it."""

    started: float = 0.0
    polls: int = 0
    anchor_t: float = 0.0
    anchor_p: int = -1


@dataclass
class Result:
    policy: str
    model: str
    requests_per_task: float
    mean_delay: float
    p95_delay: float


def make_tasks(n: int, seed: int) -> list[EmulatedTask]:
    """n tasks with the emulator's lifecycle, durations log-uniform in [30 s, 600 s]."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        total = math.exp(rng.uniform(math.log(MIN_DURATION), math.log(MAX_DURATION)))
        queued = total * rng.uniform(0.05, 0.3)
        tasks.append(
            EmulatedTask(
                id=f"t{i}",
                kind="video",
                model="m",
                prompt="p",
                created=0.0,
                queued_for=queued,
                run_for=total - queued,
                will_fail=False,
                request={},
                row_id=i,
            )
        )
    return tasks


def observer(task: EmulatedTask, model: str, rng: random.Random) -> Observe:
    """What a poll at time t sees of `task` under progress `model`."""
    gamma = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    status_of = {"queued": Status.QUEUED, "in_progress": Status.IN_PROGRESS}
    assert task.queued_for is not None

    def observe(t: float) -> tuple[Status, int | None]:
        phase, linear = task.phase(t)
        if phase not in status_of:
            return Status.SUCCEEDED, 100
        status = status_of[phase]
        if model == "none":
            return status, None
        if model == "linear" or status is Status.QUEUED:
            return status, linear
        x = (t - task.queued_for) / task.run_for  # type: ignore[operator]
        curved = int(100 * x**gamma)
        return status, (curved // 10) * 10 if model == "stepped" else curved

    return observe


def simulate(schedule: Schedule, tasks: list[EmulatedTask], model: str, seed: int) -> Result:
    """Poll every task to its end under `schedule`; count requests and lateness."""
    rng = random.Random(seed)
    requests = 0
    delays = []
    for task in tasks:
        observe = observer(task, model, rng)
        finish = task.finished_at()
        assert finish is not None
        state = _State()
        t = schedule.first
        while True:
            requests += 1
            state.polls += 1
            status, progress = observe(t)
            if status is Status.SUCCEEDED:
                delays.append(t - finish)
                break
            t += plan_delay(schedule, state, t, status, progress, None, rng.random)
    delays.sort()
    return Result(
        policy="",
        model=model,
        requests_per_task=requests / len(tasks),
        mean_delay=statistics.fmean(delays),
        p95_delay=delays[int(0.95 * (len(delays) - 1))],
    )


POLICIES: dict[str, Schedule] = {
    "docs tiers": Schedule(progress_aware=False),
    "fixed 1 s": Schedule.fixed(1.0),
    "aware (default)": Schedule(),
}

#: The grid the defaults were chosen from (run with --sweep).
SWEEP = {
    f"aware aim={aim} stretch={stretch} floor={floor}": Schedule(
        aim=aim, stretch=stretch, floor=floor
    )
    for aim in (0.7, 0.8, 0.9, 1.0)
    for stretch in (1.0, 2.0, 4.0)
    for floor in (0.5, 1.0, 2.0)
}


def run(n_tasks: int, seed: int = 7, sweep: bool = False) -> list[Result]:
    """Every policy under every progress model, on the same tasks."""
    tasks = make_tasks(n_tasks, seed)
    policies = {**POLICIES, **(SWEEP if sweep else {})}
    results = []
    for model in ("linear", "curved", "stepped", "none"):
        for name, schedule in policies.items():
            result = simulate(schedule, tasks, model, seed)
            result.policy = name
            results.append(result)
    return results


def table(results: list[Result]) -> str:
    """A Markdown table, with each policy's ratio to the docs' tiers per model."""
    base = {r.model: r for r in results if r.policy == "docs tiers"}
    lines = [
        "| progress | policy | requests/task | vs docs | mean delay (s) | p95 delay (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = r.requests_per_task / base[r.model].requests_per_task
        lines.append(
            f"| {r.model} | {r.policy} | {r.requests_per_task:.1f} | {ratio:.2f}x | "
            f"{r.mean_delay:.2f} | {r.p95_delay:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sweep", action="store_true", help="also run the parameter grid")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.tasks, args.seed, args.sweep)
    if args.json:
        print(json.dumps([r.__dict__ for r in results]))
    else:
        print(f"{args.tasks} tasks, durations log-uniform {MIN_DURATION:g}-{MAX_DURATION:g} s\n")
        print(table(results))


if __name__ == "__main__":
    main()
