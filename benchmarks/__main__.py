"""Run every benchmark and write one Markdown report.

    python -m benchmarks [--quick] [--out benchmarks/results/latest.md]

``--quick`` uses small sizes (a minute or two); the full run takes about half an hour on
2 cores. Needs nginx for the poll and download benchmarks (it falls back to the emulator
for polling, and says so) and the ``bench`` extra for the peers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

import anyio

from . import (
    bench_congestion,
    bench_decode,
    bench_download,
    bench_fleet,
    bench_poll,
    bench_scale,
    bench_schedule,
)


def machine() -> str:
    """The facts a reader needs to weigh the figures."""
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("aio88", "aiohttp", "msgspec", "anyio", "openai", "httpx")
    )
    return (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"CPython {platform.python_version()}; {versions}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run all of aio88's benchmarks.")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--out", default="benchmarks/results/latest.md")
    args = parser.parse_args(argv)
    quick = args.quick
    sections = [f"# aio88 benchmarks\n\n{time.strftime('%Y-%m-%d %H:%M')}; {machine()}\n"]

    def section(title: str, command: str, body: str) -> None:
        sections.append(f"## {title}\n\n`{command}`\n\n{body}\n")
        print(f"{title}: done", file=sys.stderr)

    n, rounds = (2000, 1) if quick else (20_000, 3)
    section(
        "Polling cost",
        f"python -m benchmarks.bench_poll -n {n} --rounds {rounds}",
        bench_poll.table(bench_poll.run(n, 64, rounds, bench_poll.CLIENTS)),
    )
    number = 10_000 if quick else 100_000
    section(
        "Decoding",
        f"python -m benchmarks.bench_decode --number {number}",
        bench_decode.table(bench_decode.run(number)),
    )
    tasks = 300 if quick else 2000
    schedules = bench_schedule.run(tasks)
    section(
        "Polling schedule",
        f"python -m benchmarks.bench_schedule --tasks {tasks}",
        bench_schedule.table(schedules) + "\n\n" + bench_schedule.callbacks_report(schedules),
    )
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    section(
        "Scale",
        "python -m benchmarks.bench_scale --sizes " + " ".join(map(str, sizes)),
        bench_scale.table(anyio.run(bench_scale.run, sizes)),
    )
    n_tasks = 50 if quick else 200
    congestion = bench_congestion.run(n_tasks, (2.0, 6.0), bench_congestion.CLIENTS)
    section(
        "429s without a collapse",
        f"python -m benchmarks.bench_congestion -n {n_tasks}",
        bench_congestion.table(congestion) + "\n\n" + bench_congestion.trace_table(congestion),
    )
    mib, dl_rounds = ([64], 1) if quick else ([256, 1024], 5)
    section(
        "Downloads",
        f"python -m benchmarks.bench_download --sizes {' '.join(map(str, mib))} "
        f"--rounds {dl_rounds}",
        bench_download.table(bench_download.run(mib, dl_rounds, [1 << 20], bench_download.CLIENTS)),
    )
    fleet_args = ["--tasks", "300", "--seconds", "5"] if quick else ["--rounds", "2"]
    missing = bench_fleet.unavailable()
    section(
        "Fleet",
        "python -m benchmarks.bench_fleet " + " ".join(fleet_args),
        f"skipped: {missing}" if missing else bench_fleet.table(bench_fleet.report(fleet_args)),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sections))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
