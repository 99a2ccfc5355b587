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

Callbacks (``callback_url``): the server POSTs an event as soon as it sees the task end; it
reaches the receiver after a log-normal transit (median 150 ms, p95 1 s), and
``poller.deliver`` turns it into one GET, which sees the task finished. The poller's own
schedule is ``Schedule.fallback()`` (60 s, then every 180 s +-10 %), the safety net for a
callback that never comes: a share of tasks (0, 5, 20 %) lose theirs, every attempt
included, and only the fallback polls find them. One variant fails 5 % of the delivery
attempts, retried as the server does (10 s doubling, capped at 15 min, 8 attempts, on its
outbox loop's 15 s scan).

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
from aio88._config import DEFAULT_WAIT_TIMEOUT
from aio88._schedule import plan_delay
from aio88.testing import EmulatedTask

MIN_DURATION, MAX_DURATION = 30.0, 600.0

#: A callback's transit from the server seeing the task end to the receiver having it:
#: log-normal with this median and 95th percentile (seconds). The median is one HTTPS POST
#: over the internet (a TLS handshake and a request: 2-3 round trips of 30-60 ms) plus the
#: server's outbox write; the long tail is a loaded server, a cold connection, DNS, a proxy
#: or load balancer in front of the receiver.
CALLBACK_MEDIAN, CALLBACK_P95 = 0.15, 1.0
CALLBACK_SIGMA = math.log(CALLBACK_P95 / CALLBACK_MEDIAN) / statistics.NormalDist().inv_cdf(0.95)
#: The 88API server's delivery (reference/88api-api.md 4.8): a POST times out after 15 s;
#: a failed attempt is retried after 10 s, doubling, capped at 15 min, 8 attempts in all,
#: each claimed by an outbox loop that scans every 15 s.
ATTEMPT_TIMEOUT, RETRY_FIRST, RETRY_CAP, ATTEMPTS, OUTBOX_SCAN = 15.0, 10.0, 900.0, 8, 15.0

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
    """One policy under one progress model: its requests per task and detection delays.

    The callback fields are set for the callback policies only: ``lost`` tasks never got
    their callback; ``lost_bound`` is the longest gap between two fallback polls.
    """

    policy: str
    model: str
    requests_per_task: float
    mean_delay: float
    p95_delay: float
    max_delay: float = 0.0
    tasks: int = 0
    #: Tasks seen finished within the default wait() timeout (30 min from the create).
    finished: int = 0
    callbacks: bool = False
    lost_share: float = 0.0
    flaky: float = 0.0
    lost: int = 0
    lost_max_delay: float | None = None
    lost_bound: float | None = None
    #: Tasks whose callback came by a retry (its first attempt failed).
    retried: int = 0
    #: The requests per task made by the fallback schedule (the rest: one per callback).
    fallback_per_task: float | None = None


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


def poll_all(
    schedule: Schedule,
    tasks: list[EmulatedTask],
    model: str,
    seed: int,
    arrivals: list[float | None] | None = None,
) -> tuple[int, list[float], int]:
    """Poll every task to its end under `schedule`: the requests made, each task's
    detection delay (in task order) and how many of the requests callbacks caused.

    ``arrivals`` are the times callbacks reach the poller (``None``: never). As
    ``poller.deliver`` does, a callback moves the task's next poll to its arrival: one GET.
    """
    rng = random.Random(seed)
    requests = by_callback = 0
    delays = []
    for i, task in enumerate(tasks):
        observe = observer(task, model, rng)
        finish = task.finished_at()
        assert finish is not None
        arrival = None if arrivals is None else arrivals[i]
        state = _State()
        t = schedule.first
        while True:
            if arrival is not None and arrival < t:
                t, arrival = arrival, None
                by_callback += 1
            requests += 1
            state.polls += 1
            status, progress = observe(t)
            if status is Status.SUCCEEDED:
                delays.append(t - finish)
                break
            t += plan_delay(schedule, state, t, status, progress, None, rng.random)
    return requests, delays, by_callback


def _result(
    policy: str, model: str, requests: int, delays: list[float], finish: list[float]
) -> Result:
    ordered = sorted(delays)
    return Result(
        policy=policy,
        model=model,
        requests_per_task=requests / len(delays),
        mean_delay=statistics.fmean(delays),
        p95_delay=ordered[int(0.95 * (len(ordered) - 1))],
        max_delay=ordered[-1],
        tasks=len(delays),
        finished=sum(f + d <= DEFAULT_WAIT_TIMEOUT for f, d in zip(finish, delays, strict=True)),
    )


def simulate(schedule: Schedule, tasks: list[EmulatedTask], model: str, seed: int) -> Result:
    """Poll every task to its end under `schedule`; count requests and lateness."""
    requests, delays, _ = poll_all(schedule, tasks, model, seed)
    return _result("", model, requests, delays, [t.finished_at() or 0.0 for t in tasks])


def deliver(finish: float, rng: random.Random, flaky: float) -> tuple[float | None, int]:
    """When the server's callback for a task that ended at `finish` reaches the receiver
    (``None``: every attempt failed), and how many attempts failed before it."""
    scan = rng.uniform(0.0, OUTBOX_SCAN)  # the phase of the server's outbox loop
    t = finish  # the first attempt is made at once
    for attempt in range(ATTEMPTS):
        if attempt:
            due = t + min(RETRY_FIRST * 2 ** (attempt - 1), RETRY_CAP)
            t = scan + math.ceil((due - scan) / OUTBOX_SCAN) * OUTBOX_SCAN
        transit = rng.lognormvariate(math.log(CALLBACK_MEDIAN), CALLBACK_SIGMA)
        if transit >= ATTEMPT_TIMEOUT:
            t += ATTEMPT_TIMEOUT  # the server gives up on it, then schedules the retry
        elif rng.random() >= flaky:
            return t + transit, attempt
    return None, ATTEMPTS


def simulate_callbacks(
    schedule: Schedule,
    tasks: list[EmulatedTask],
    model: str,
    seed: int,
    lost_share: float,
    flaky: float,
) -> Result:
    """Every task asks for a callback; `lost_share` of them never get it (all attempts
    lost), the others get it after the transit and the server's retries (`flaky`: the
    share of attempts that fail). `schedule` polls as the fallback."""
    transit, loss = random.Random(seed + 1), random.Random(seed + 2)
    arrivals: list[float | None] = []
    lost, retried = [], 0
    for task in tasks:
        finish = task.finished_at()
        assert finish is not None
        arrival, failures = deliver(finish, transit, flaky)
        # One draw per task, whatever the share: the 5 % lost are among the 20 % lost.
        gone = loss.random() < lost_share or arrival is None
        lost.append(gone)
        arrivals.append(None if gone else arrival)
        retried += not gone and failures > 0
    requests, delays, by_callback = poll_all(schedule, tasks, model, seed, arrivals)
    result = _result("", model, requests, delays, [t.finished_at() or 0.0 for t in tasks])
    lost_delays = [d for d, gone in zip(delays, lost, strict=True) if gone]
    result.callbacks = True
    result.lost_share, result.flaky = lost_share, flaky
    result.lost, result.retried = len(lost_delays), retried
    result.fallback_per_task = (requests - by_callback) / len(tasks)
    result.lost_max_delay = max(lost_delays, default=None)
    # The longest a lost task can wait: the first poll, or one jittered fallback interval.
    result.lost_bound = max(schedule.first, schedule.base_delay(0.0, 0) * (1 + schedule.jitter))
    return result


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


#: The callback variants: (name, fallback schedule, share of callbacks lost, share of
#: delivery attempts that fail and are retried by the server).
CALLBACKS: list[tuple[str, Schedule, float, float]] = [
    ("callbacks, 0% lost", Schedule.fallback(), 0.0, 0.0),
    ("callbacks, 0% lost, 5% of attempts retried", Schedule.fallback(), 0.0, 0.05),
    ("callbacks, 5% lost", Schedule.fallback(), 0.05, 0.0),
    ("callbacks, 20% lost", Schedule.fallback(), 0.2, 0.0),
]

#: Other fallback intervals (run with --sweep): what the requests target would cost.
FALLBACK_SWEEP: list[tuple[str, Schedule, float, float]] = [
    (f"fallback({first:g}, {every:g}), {lost:.0%} lost", Schedule.fallback(first, every), lost, 0.0)
    for first, every in ((120, 300), (300, 300), (300, 600), (600, 600), (600, 1200))
    for lost in (0.0, 0.2)
]

#: Baselines shown beside the callbacks (by their POLICIES names).
BASELINES = ("aware (default)", "docs tiers", "fixed 1 s")


def run(n_tasks: int, seed: int = 7, sweep: bool = False) -> list[Result]:
    """Every policy under every progress model, on the same tasks; then every callback
    variant under every progress model."""
    tasks = make_tasks(n_tasks, seed)
    policies = {**POLICIES, **(SWEEP if sweep else {})}
    results = []
    for model in ("linear", "curved", "stepped", "none"):
        for name, schedule in policies.items():
            result = simulate(schedule, tasks, model, seed)
            result.policy = name
            results.append(result)
    for model in ("linear", "curved", "stepped", "none"):
        for name, schedule, lost_share, flaky in CALLBACKS + (FALLBACK_SWEEP if sweep else []):
            result = simulate_callbacks(schedule, tasks, model, seed, lost_share, flaky)
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
        if r.callbacks:
            continue
        ratio = r.requests_per_task / base[r.model].requests_per_task
        lines.append(
            f"| {r.model} | {r.policy} | {r.requests_per_task:.1f} | {ratio:.2f}x | "
            f"{r.mean_delay:.2f} | {r.p95_delay:.2f} |"
        )
    return "\n".join(lines)


def _collapsed(results: list[Result], policy: str) -> list[Result]:
    """`policy`'s results, one per progress model; one alone (model "any") when every
    model gave the same figures (a schedule that ignores progress)."""
    rows = [r for r in results if r.policy == policy]
    first = {**rows[0].__dict__, "model": "any"}
    if all({**r.__dict__, "model": "any"} == first for r in rows):
        return [Result(**first)]
    return rows


def callbacks_table(results: list[Result]) -> str:
    """The callback variants beside the polling baselines, as a Markdown table."""
    base = {r.model: r for r in results if r.policy == "docs tiers"}
    lines = [
        "| policy | progress | requests/task | vs docs | mean delay (s) | p95 delay (s) "
        "| of which fallback polls | lost | lost: max delay (s) | fallback bound (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    callbacks = dict.fromkeys(r.policy for r in results if r.callbacks)
    for policy in [*BASELINES, *callbacks]:
        for r in _collapsed(results, policy):
            docs = base.get(r.model, base["linear"])
            ratio = r.requests_per_task / docs.requests_per_task
            lost = (
                f"{r.lost} | {r.lost_max_delay:.1f} | {r.lost_bound:.0f}"
                if r.lost_max_delay is not None and r.lost_bound is not None
                else ("0 | - | -" if r.callbacks else "- | - | -")
            )
            fallback = "-" if r.fallback_per_task is None else f"{r.fallback_per_task:.2f}"
            lines.append(
                f"| {r.policy} | {r.model} | {r.requests_per_task:.2f} | {ratio:.2f}x | "
                f"{r.mean_delay:.2f} | {r.p95_delay:.2f} | {fallback} | {lost} |"
            )
    return "\n".join(lines)


def targets(results: list[Result]) -> list[tuple[str, bool]]:
    """The issue's targets for callbacks, each with whether this run met it."""
    clean = [r for r in results if r.policy == CALLBACKS[0][0]]  # Schedule.fallback(), 0% lost
    requests = max(r.requests_per_task for r in clean)
    mean = max(r.mean_delay for r in clean)
    checks = [
        (f"callbacks, 0% lost: {requests:.2f} requests/task (target <= 1.2)", requests <= 1.2),
        (f"callbacks, 0% lost: mean delay {mean:.2f} s (target < 1 s)", mean < 1.0),
    ]
    for name, _, lost_share, _ in CALLBACKS:
        for r in _collapsed(results, name) if lost_share == 0.2 else []:
            assert r.lost_bound is not None
            worst = r.lost_max_delay or 0.0
            checks += [
                (
                    f"{name} ({r.model}): {r.finished}/{r.tasks} tasks seen finished within "
                    f"the default wait() timeout ({DEFAULT_WAIT_TIMEOUT:g} s)",
                    r.finished == r.tasks,
                ),
                (
                    f"{name} ({r.model}): the {r.lost} lost tasks seen within {worst:.1f} s "
                    f"of their end (fallback bound {r.lost_bound:.0f} s)",
                    worst <= r.lost_bound,
                ),
            ]
    return checks


def callbacks_report(results: list[Result]) -> str:
    """The callbacks table and the targets, met or missed, as Markdown."""
    lines = [callbacks_table(results), ""]
    lines += [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in targets(results)]
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
        transit = f"median {CALLBACK_MEDIAN:g} s, p95 {CALLBACK_P95:g} s"
        print(f"\nCallbacks: transit log-normal, {transit}\n")
        print(callbacks_report(results))


if __name__ == "__main__":
    main()
