"""The fleet's cost and its rate budget's accuracy: several processes, one PostgreSQL.

Two measurements, each with real processes (``benchmarks/_fleet_worker.py``), a real
PostgreSQL (a throwaway cluster, or ``--dsn``) and the emulator on loopback:

- **Polling**: N running tasks polled every second (``Schedule.fixed(1.0)``: N polls/s
  offered). Once by one process without a fleet (the baseline), then by W processes of a
  fleet all waiting on the same N tasks (``Client(fleet=...)``: each task is polled only
  by the process holding its lease; the others wait for the fleet's notice). After the
  claims have settled and a warm-up, each process counts its polls and its own CPU
  (user + system) over the same interval. Reported: polls/s fleet-wide, CPU µs per poll
  (the processes' CPU summed over their polls summed), the ratio to the baseline, how
  the polls fell between the processes, and the CPU the database and the emulator spent
  in the interval (read from ``/proc``; the database's only for a cluster started here).
  The emulator runs in its own process, so its CPU is not the workers'.
- **Rate budget**: W processes hammer one task through ``rate_limit=R`` (more senders
  than R allows) for S seconds; the emulator's log of arrival times gives the requests
  in the first second, the worst sliding 1 s window after it, and the mean rate after
  it. Expected: at most R plus one burst of R in the first second, at most R per second
  after. The emulator runs inside this process here (it answers only R/s).

    python -m benchmarks.bench_fleet [--dsn DSN] [--tasks 1500] [--seconds 20]
        [--workers 3] [--rounds 1] [--rates 100 500] [--rate-seconds 10] [--json]

Without ``--dsn`` it starts a cluster with ``tests/postgres.py`` (Debian's PostgreSQL;
as root, run as the postgres user).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


class Worker:
    """One ``_fleet_worker`` process: send it commands, read its JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks._fleet_worker",
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def read(self, event: str) -> dict[str, Any]:
        """The next line, which must be ``event``."""
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            assert self.proc.stderr is not None
            err = (await self.proc.stderr.read()).decode(errors="replace")
            raise RuntimeError(f"a worker exited ({await self.proc.wait()}): {err[-3000:]}")
        line: dict[str, Any] = json.loads(raw)
        if line["event"] != event:
            raise RuntimeError(f"a worker said {line}, expected {event!r}")
        return line

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    async def ask(self, command: str, event: str) -> dict[str, Any]:
        self.send(command)
        return await self.read(event)

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


@asynccontextmanager
async def workers(count: int, *args: str) -> AsyncIterator[list[Worker]]:
    """``count`` workers started at once, each ready; killed at the end if still there."""
    started: list[Worker] = []
    try:
        for _ in range(count):
            started.append(await Worker.start(*args))  # noqa: PERF401 - one by one: cleanup
        with anyio.fail_after(60):
            for worker in started:
                await worker.read("ready")
        yield started
    finally:
        for worker in started:
            await worker.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def family_cpu(parent: int) -> float:
    """CPU of ``parent`` and its children now alive (a PostgreSQL server's backends)."""
    total = cpu_seconds(parent)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[tuple[str, int | None]]:
    """The DSN to use, and the server's main pid when it is ours (to read its CPU)."""
    if dsn is not None:
        yield dsn, None
        return
    # The tests' throwaway cluster: benchmarks/ is run from the checkout, tests/ is there.
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import PostgresServer, find_bindir  # type: ignore[import-not-found]

    with PostgresServer(find_bindir()) as server:
        pid = int((server.data / "postmaster.pid").read_text().split()[0])
        yield server.dsn(), pid


def unavailable() -> str | None:
    """Why no PostgreSQL cluster can be started here, or None (for ``python -m
    benchmarks``, which runs this benchmark only where it can)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import PostgresUnavailable, find_bindir  # type: ignore[import-not-found,unused-ignore]

    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "needs asyncpg (the aio88[postgres] extra)"
    try:
        find_bindir()
    except PostgresUnavailable as missing:
        return str(missing)
    return None


@asynccontextmanager
async def emulator_process() -> AsyncIterator[tuple[str, int]]:
    """The emulator in its own process, its tasks running for an hour: URL and pid."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "aio88.testing", "--port", "0", "--json"),
        *("--duration", "3600", "3600"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            ready = json.loads(await proc.stdout.readline())
        yield ready["base_url"], proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def create_tasks(base_url: str, n: int) -> list[str]:
    """``n`` new running tasks in the emulator."""
    from aio88 import Client

    ids: list[str] = []
    async with Client("sk-test", base_url=base_url) as client:

        async def creator(count: int) -> None:
            for _ in range(count):
                video = await client.videos.create(prompt="fleet bench")
                ids.append(video.id)

        async with anyio.create_task_group() as tg:
            for i in range(32):
                tg.start_soon(creator, n // 32 + (i < n % 32))
    return ids


async def measure_polling(
    base_url: str,
    emulator_pid: int,
    dsn: str | None,
    db_pid: int | None,
    *,
    count: int,
    tasks: int,
    seconds: float,
    warmup: float,
    lease: float,
) -> dict[str, Any]:
    """``count`` workers (in a fleet when ``dsn``) polling the same ``tasks`` new tasks."""
    ids = await create_tasks(base_url, tasks)
    with tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False) as file:
        file.write("\n".join(ids))
    args = ["--base-url", base_url, "--lease", str(lease)]
    if dsn is not None:
        args += ["--dsn", dsn]
    try:
        async with workers(count, *args, "poll", file.name) as started:
            # Settled: every task polled once and its lease held by exactly one process.
            settle_started = time.monotonic()
            with anyio.fail_after(120):
                while True:
                    states = [await w.ask("status", "status") for w in started]
                    if sum(s["held"] for s in states) >= tasks and (
                        sum(s["polls"] for s in states) >= tasks
                    ):
                        break
                    await anyio.sleep(0.2)
            settled = time.monotonic() - settle_started
            await anyio.sleep(warmup)
            db_before = family_cpu(db_pid) if db_pid else None
            emulator_before = cpu_seconds(emulator_pid)
            for worker in started:
                worker.send("start")
            for worker in started:
                await worker.read("started")
            await anyio.sleep(seconds)
            for worker in started:
                worker.send("stop")
            results = [await worker.read("result") for worker in started]
            db_cpu = family_cpu(db_pid) - db_before if db_pid and db_before is not None else None
            emulator_cpu = cpu_seconds(emulator_pid) - emulator_before
    finally:
        os.unlink(file.name)
    polls = sum(r["polls"] for r in results)
    cpu = sum(r["user"] + r["system"] for r in results)
    span = statistics.mean(r["seconds"] for r in results)
    return {
        "processes": count,
        "fleet": dsn is not None,
        "tasks": tasks,
        "seconds": span,
        "settled_after": settled,
        "polls": polls,
        "polls_per_s": polls / span,
        "cpu_us_per_poll": cpu / polls * 1e6 if polls else None,
        "user_us_per_poll": sum(r["user"] for r in results) / polls * 1e6 if polls else None,
        "system_us_per_poll": sum(r["system"] for r in results) / polls * 1e6 if polls else None,
        "polls_by_process": sorted((r["polls"] for r in results), reverse=True),
        "cpu_by_process": sorted((r["user"] + r["system"] for r in results), reverse=True),
        "errors": sum(r["errors"] for r in results),
        "db_cpu_us_per_poll": db_cpu / polls * 1e6 if db_cpu is not None and polls else None,
        "emulator_cpu_share": emulator_cpu / span,
    }


def windows(times: list[float], width: float = 1.0) -> tuple[int, int, float]:
    """Requests in the first ``width`` after the first one; the most in any window of
    ``width`` starting after that (every window starting at a request is the worst kind:
    one starting elsewhere can only hold fewer); the mean rate after the first window."""
    times = sorted(times)
    start = times[0]
    first = bisect.bisect_left(times, start + width)
    worst = 0
    for i in range(first, len(times)):
        worst = max(worst, bisect.bisect_left(times, times[i] + width) - i)
    after = times[first:]
    mean = (len(after) - 1) / (after[-1] - after[0]) if len(after) > 1 else 0.0
    return first, worst, mean


async def measure_rate(
    dsn: str, *, count: int, rate: float, seconds: float, senders: int
) -> dict[str, Any]:
    """``count`` workers hammering one task through ``rate_limit=rate``."""
    from aio88.testing import Emulator

    # A fresh emulator (a new port) per run: a new budget name, so a full bucket.
    async with Emulator(duration=None) as emu:
        task_id = emu.add_task()
        args = ["--base-url", emu.base_url, "--dsn", dsn, "--rate", str(rate)]
        args += ["--senders", str(senders), "hammer", task_id, str(seconds)]
        sent: dict[int, int] = {}
        async with workers(count, *args) as started:
            for worker in started:
                worker.send("go")

            async def result(worker: Worker) -> None:
                sent[worker.proc.pid] = (await worker.read("hammered"))["sent"]

            # A guard, not a measurement: a worker that never ends its run is reported
            # (and killed) rather than left to hang the benchmark.
            with anyio.move_on_after(seconds + 30):
                async with anyio.create_task_group() as tg:
                    for worker in started:
                        tg.start_soon(result, worker)
            stuck = [worker.proc.pid for worker in started if worker.proc.pid not in sent]
        times = [r.at for r in emu.requests if r.method == "GET"]
        statuses = {r.status for r in emu.requests if r.method == "GET"}
    first, worst, mean = windows(times)
    return {
        "rate": rate,
        "processes": count,
        "seconds": seconds,
        "requests": len(times),
        "sent_by_process": sorted(sent.values(), reverse=True),
        "stuck": stuck,
        "first_second": first,
        "worst_window_after": worst,
        "mean_rate_after": mean,
        "statuses": sorted(statuses),
    }


async def run(
    dsn: str | None,
    *,
    tasks: int,
    seconds: float,
    warmup: float,
    count: int,
    rounds: int,
    lease: float,
    rates: list[float],
    rate_seconds: float,
    senders: int,
) -> dict[str, Any]:
    """Both measurements; the polling ones ``rounds`` times, baseline and fleet in turn."""
    polling: list[dict[str, Any]] = []
    with database(dsn) as (url, db_pid):
        async with emulator_process() as (base_url, emulator_pid):
            for _ in range(rounds):
                for fleet_dsn, processes in ((None, 1), (url, count)):
                    polling.append(
                        await measure_polling(
                            base_url,
                            emulator_pid,
                            fleet_dsn,
                            db_pid,
                            count=processes,
                            tasks=tasks,
                            seconds=seconds,
                            warmup=warmup,
                            lease=lease,
                        )
                    )
                    print(f"polling, {processes} process(es): done", file=sys.stderr)
        limits = []
        for rate in rates:
            limits.append(
                await measure_rate(
                    url, count=count, rate=rate, seconds=rate_seconds, senders=senders
                )
            )
            print(f"rate {rate:g}/s: done", file=sys.stderr)
    return {
        "tasks": tasks,
        "seconds": seconds,
        "rounds": rounds,
        "lease": lease,
        "database": "--dsn" if dsn else "throwaway cluster",
        "polling": polling,
        "rates": limits,
    }


def _spread(values: list[float], digits: int = 0) -> str:
    """The median, and the range when there are several."""
    median = f"{statistics.median(values):,.{digits}f}"
    if len(values) < 2:
        return median
    return f"{median} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def table(report: dict[str, Any]) -> str:
    """Markdown: the polling table (median and range over rounds), the rate table, and
    each target, met or missed."""
    base = [r for r in report["polling"] if not r["fleet"]]
    fleet = [r for r in report["polling"] if r["fleet"]]
    ratios = [f["cpu_us_per_poll"] / b["cpu_us_per_poll"] for b, f in zip(base, fleet, strict=True)]
    rounds = report["rounds"]
    lines = [
        f"{report['tasks']:,} running tasks polled every 1 s ({report['tasks']:,} polls/s "
        f"offered), {report['seconds']:g} s measured after the claims settled, lease "
        f"{report['lease']:g} s; median (min-max) of {rounds} round{'s' * (rounds > 1)}",
        "",
        "| setup | polls/s | CPU µs/poll (user + system) | vs no fleet "
        "| polls by process | database CPU µs/poll | emulator CPU |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for label, runs in (
        ("1 process, no fleet", base),
        (f"{fleet[0]['processes']} processes, fleet", fleet),
    ):
        cpu = [r["cpu_us_per_poll"] for r in runs]
        user = statistics.median(r["user_us_per_poll"] for r in runs)
        system = statistics.median(r["system_us_per_poll"] for r in runs)
        ratio = "1" if runs is base else _spread(ratios, 2) + "x"
        last = runs[-1]["polls_by_process"]
        db = [r["db_cpu_us_per_poll"] for r in runs if r["db_cpu_us_per_poll"] is not None]
        lines.append(
            f"| {label} | {_spread([r['polls_per_s'] for r in runs])} | {_spread(cpu)} "
            f"({user:.0f} + {system:.0f}) | {ratio} | {' / '.join(f'{p:,}' for p in last)} "
            f"| {_spread(db) if db and runs is fleet else '-'} "
            f"| {statistics.median(r['emulator_cpu_share'] for r in runs):.0%} |"
        )
    lines += [
        "",
        "| R (req/s) | processes | first second | worst 1 s window after | mean after "
        "| requests in total | per process |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rates"]:
        lines.append(
            f"| {r['rate']:g} | {r['processes']} | {r['first_second']} "
            f"({r['first_second'] / r['rate']:.2f} R) | {r['worst_window_after']} "
            f"({r['worst_window_after'] / r['rate']:.2f} R) | {r['mean_rate_after']:.1f}/s "
            f"| {r['requests']:,} | {' / '.join(map(str, r['sent_by_process']))}"
            f"{' + STUCK' * len(r['stuck'])} |"
        )
    fleet_rate = statistics.median(r["polls_per_s"] for r in fleet)
    ratio = statistics.median(ratios)
    lines.append("")
    lines.append(
        f"- {'met' if fleet_rate >= 1000 else 'MISSED'}: at least 1,000 polls/s fleet-wide "
        f"({fleet_rate:,.0f}/s)"
    )
    lines.append(
        f"- {'met' if ratio <= 2 else 'MISSED'}: at most 2x the CPU per poll of no fleet "
        f"({ratio:.2f}x)"
    )
    for r in report["rates"]:
        # The contract: any 1 s window within R plus one burst of R, fleet-wide. How close
        # the steady state comes to R is the accuracy, reported beside it.
        worst = max(r["first_second"], r["worst_window_after"])
        ok = worst <= 2 * r["rate"] and not r["stuck"]
        lines.append(
            f"- {'met' if ok else 'MISSED'}: R={r['rate']:g}: every 1 s window within R plus "
            f"one burst of R (worst {worst}); after the first second, worst "
            f"{r['worst_window_after'] / r['rate']:.2f} R, "
            f"mean {r['mean_rate_after'] / r['rate']:.3f} R"
            + (f"; {len(r['stuck'])} process(es) never finished" if r["stuck"] else "")
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="PostgreSQL to use (default: start one)")
    parser.add_argument("--tasks", type=int, default=1500, help="tasks polled, each every 1 s")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured interval")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after settling")
    parser.add_argument("--workers", type=int, default=3, help="processes of the fleet")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0])
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=32, help="senders per process")
    parser.add_argument("--json", action="store_true")
    return parser


def report(argv: list[str]) -> dict[str, Any]:
    """Run the benchmark as the command line ``argv`` says; its report."""
    args = parser().parse_args(argv)
    return anyio.run(
        lambda: run(
            args.dsn,
            tasks=args.tasks,
            seconds=args.seconds,
            warmup=args.warmup,
            count=args.workers,
            rounds=args.rounds,
            lease=args.lease,
            rates=args.rates,
            rate_seconds=args.rate_seconds,
            senders=args.senders,
        )
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Stopped from outside: unwind, so that the cluster started here is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = report(argv)
    print(json.dumps(result) if parser().parse_args(argv).json else table(result))


if __name__ == "__main__":
    main()
