"""Memory and scheduler CPU per tracked task, at 10k, 100k and 1M tasks.

Two measurements of the real Poller:

- memory: ``tracemalloc`` bytes (and the RSS growth) for tracking N tasks, each with a
  decoded task as its last-seen state, as after a first poll;
- scheduler CPU: N tasks polled in a loop through the real workers, heap and schedule,
  with the HTTP fetch replaced by an in-memory one, so what is timed is the scheduler
  alone (the request path is measured by ``bench_poll``).

    python -m benchmarks.bench_scale [--sizes 10000 100000 1000000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
import tracemalloc

import anyio

from aio88 import Client, Kind, Poller, Schedule, Task
from aio88._models import compact, decode_video

BODY = (
    b'{"id":"task_%032d","task_id":"task_%032d","object":"video","model":"sora-2",'
    b'"status":"in_progress","progress":42,"created_at":1712697600,"seconds":"8",'
    b'"size":"1280x720","error":null}'
)


def rss_mib() -> float:
    """Current resident set size (from /proc), in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _fill(poller: object, n: int) -> None:
    for i in range(n):
        task_id = f"task_{i:032d}"
        poller._track(task_id, "video", 1800.0, fresh=True)  # type: ignore[attr-defined]
        poller._tracked[task_id].task = compact(decode_video(BODY % (i, i)))  # type: ignore[attr-defined]


async def memory(n: int) -> dict[str, float]:
    """Memory per tracked task, each with a decoded last-seen task, as after a poll.

    RSS growth is measured on its own (tracemalloc roughly doubles memory); the exact
    Python bytes per task come from a tracemalloc pass over at most 100,000 tasks.
    """
    client = Client("sk-bench", base_url="http://127.0.0.1:9")
    poller = client.poller(concurrency=64)
    gc.collect()
    rss_before = rss_mib()
    _fill(poller, n)
    rss_growth = rss_mib() - rss_before
    del poller
    gc.collect()

    sample = min(n, 100_000)
    poller = client.poller(concurrency=64)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _fill(poller, sample)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del poller
    gc.collect()
    return {"tasks": n, "bytes_per_task": traced / sample, "rss_growth_mib": rss_growth}


async def scheduler_cpu(n: int, polls_per_task: int = 3) -> dict[str, float]:
    """CPU seconds per scheduled poll, network excluded."""
    client = Client("sk-bench", base_url="http://127.0.0.1:9")
    # Each poll answers with its own task (the poller refuses an answer about another).
    tasks = {f"task_{i:032d}": decode_video(BODY % (i, i)) for i in range(n)}
    remaining = n * polls_per_task
    done = anyio.Event()

    async def fetch(kind: Kind, task_id: str) -> tuple[Task, float | None]:
        nonlocal remaining
        remaining -= 1
        if remaining <= 0:
            done.set()
        return tasks[task_id], None

    async with client:
        poller = Poller(
            client._transport,  # the real poller; only the fetch is in memory
            concurrency=64,
            schedule=Schedule.fixed(1e-6),
            timeout=None,
            fetch=fetch,
        )
        async with poller:
            for i in range(n):
                poller.add(f"task_{i:032d}", kind="video")
            started_cpu, started = time.process_time(), time.perf_counter()
            await done.wait()
            cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    polls = n * polls_per_task
    return {
        "cpu_tasks": n,
        "polls": polls,
        "cpu_us_per_poll": cpu / polls * 1e6,
        "polls_per_s": polls / wall,
    }


async def run(sizes: list[int]) -> list[dict[str, float]]:
    """Both measurements at every size."""
    results = []
    for n in sizes:
        row = await memory(n)
        row.update(await scheduler_cpu(min(n, 200_000)))
        results.append(row)
    return results


def table(results: list[dict[str, float]]) -> str:
    """A Markdown table of the results."""
    lines = [
        "| tracked tasks | Python bytes/task | RSS growth (MiB) | scheduler CPU µs/poll |",
        "|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {int(r['tasks']):,} | {r['bytes_per_task']:.0f} | {r['rss_growth_mib']:.1f} | "
        f"{r['cpu_us_per_poll']:.1f} (over {int(r['cpu_tasks']):,} tasks) |"
        for r in results
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = anyio.run(run, args.sizes)
    print(json.dumps(results) if args.json else table(results))


if __name__ == "__main__":
    main()
