"""429s without a collapse: aio88's ``watch()`` vs openai-python's ``videos.poll()``.

N tasks with seeded durations are created on the emulator with no faults; then they are
polled to the end while a share of the polls is answered 429, with and without
``Retry-After``. For each scenario and client:

- the wall time to the last outcome, and its ratio to the same client's fault-free run;
- the requests sent, and the most in any one second;
- the requests the client started during a pause the server had asked for (after it
  received a 429 with ``Retry-After``, until that many seconds had passed; timed by the
  client's own request hooks): a polite client starts none;
- tasks that ended in an error rather than their outcome;
- for aio88, the poller's concurrency over time (sampled every 100 ms).

Both clients honour the emulator's ``openai-poll-after-ms`` hint (500 ms by default: a
demanding case, every task polled twice a second), so the fault-free runs poll alike.
openai-python's peer is what its docs suggest: ``videos.poll(id)`` for every task at once,
with its default retries.

    python -m benchmarks.bench_congestion [-n 200] [--duration 2 6] [--hint-ms 500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass, field

import aiohttp
import anyio
import httpx

from aio88 import Client
from aio88.testing import Emulator

#: (share of polls answered 429, the Retry-After they carry).
SCENARIOS: list[tuple[float, float | None]] = [
    (0.0, None),
    (0.05, None),
    (0.05, 1.0),
    (0.20, None),
    (0.20, 1.0),
]
CLIENTS = ["aio88", "openai"]


@dataclass
class Run:
    """One client, one scenario."""

    client: str
    rate_429: float
    retry_after: float | None
    seconds: float
    requests: int
    peak_per_second: int
    during_pauses: int | None
    errors: int
    concurrency: list[tuple[float, int]] = field(default_factory=list)


def peak_per_second(times: list[float]) -> int:
    """The most of ``times`` (sorted) within any one second."""
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass
class Hooks:
    """What a client's own request hooks saw: when each request started, and when each
    429 arrived."""

    starts: list[float] = field(default_factory=list)
    limited: list[float] = field(default_factory=list)

    def aiohttp(self) -> aiohttp.TraceConfig:
        """The hooks as aiohttp tracing (aio88 takes ``trace_configs=``)."""

        async def start(*_: object) -> None:
            self.starts.append(time.monotonic())

        async def end(
            _session: object, _ctx: object, params: aiohttp.TraceRequestEndParams
        ) -> None:
            if params.response.status == 429:
                self.limited.append(time.monotonic())

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(start)
        trace.on_request_end.append(end)
        return trace

    async def on_httpx_request(self, _request: object) -> None:
        """httpx's request hook (openai-python's transport)."""
        self.starts.append(time.monotonic())

    async def on_httpx_response(self, response: httpx.Response) -> None:
        """httpx's response hook."""
        if response.status_code == 429:
            self.limited.append(time.monotonic())


#: A request started this soon after a 429's head arrived was on its way already: the
#: client's hook sees the head before the client has read and acted on the answer.
READ_GRACE = 0.01


def count_in_pauses(times: list[float], answers_429: list[float], pause: float) -> int:
    """How many of ``times`` (sorted) fall within ``pause`` seconds after a 429 arrived
    (from ``READ_GRACE`` on)."""
    windows: list[tuple[float, float]] = []
    for t in sorted(answers_429):
        start, end = t + READ_GRACE, t + pause
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(windows[-1][1], end))
        elif start < end:
            windows.append((start, end))
    count, i = 0, 0
    for start, end in windows:
        while i < len(times) and times[i] < start:
            i += 1
        j = i
        while j < len(times) and times[j] < end:
            j += 1
        count += j - i
        i = j
    return count


async def _aio88(
    emu: Emulator, ids: list[str], trace: list[tuple[float, int]], hooks: Hooks
) -> int:
    errors = 0
    async with Client("sk-bench", base_url=emu.base_url, trace_configs=[hooks.aiohttp()]) as client:
        started = time.monotonic()
        async with client.watch(ids, concurrency=64, timeout=300) as outcomes:

            async def sample() -> None:
                while True:
                    trace.append((time.monotonic() - started, outcomes.stats().concurrency))
                    await anyio.sleep(0.1)

            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                async for outcome in outcomes:
                    errors += outcome.error is not None and outcome.task is None
                tg.cancel_scope.cancel()
    return errors


async def _openai(emu: Emulator, ids: list[str], hooks: Hooks) -> int:
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    http = DefaultAsyncHttpxClient(
        event_hooks={"request": [hooks.on_httpx_request], "response": [hooks.on_httpx_response]}
    )
    async with AsyncOpenAI(
        api_key="sk-bench", base_url=emu.base_url + "/v1", http_client=http
    ) as client:
        results = await asyncio.gather(
            *(client.videos.poll(task_id) for task_id in ids), return_exceptions=True
        )
    return sum(isinstance(result, BaseException) for result in results)


async def one(
    client: str,
    n: int,
    duration: tuple[float, float],
    rate: float,
    pause: float | None,
    hint_ms: int | None = 500,
) -> Run:
    """Create ``n`` tasks, then poll them to the end with ``rate`` of polls answered 429."""
    async with Emulator(
        api_key="sk-bench", seed=7, duration=duration, poll_after_ms=hint_ms, dialect="docs"
    ) as emu:
        async with Client("sk-bench", base_url=emu.base_url) as creator:
            ids = [(await creator.videos.create(prompt=f"fox {i}")).id for i in range(n)]
        emu.reset_log()
        emu.faults.rate_429, emu.faults.retry_after = rate, pause
        trace: list[tuple[float, int]] = []
        hooks = Hooks()
        started = time.monotonic()
        if client == "aio88":
            errors = await _aio88(emu, ids, trace, hooks)
        else:
            errors = await _openai(emu, ids, hooks)
        seconds = time.monotonic() - started
        polls = [r for r in emu.requests if r.method == "GET" and r.origin == "api"]
    times = sorted(r.at for r in polls)
    return Run(
        client=client,
        rate_429=rate,
        retry_after=pause,
        seconds=round(seconds, 2),
        requests=len(polls),
        peak_per_second=peak_per_second(times),
        during_pauses=(
            None if pause is None else count_in_pauses(sorted(hooks.starts), hooks.limited, pause)
        ),
        errors=errors,
        concurrency=[(round(t, 1), c) for t, c in trace],
    )


def run(
    n: int, duration: tuple[float, float], clients: list[str], hint_ms: int | None = 500
) -> list[Run]:
    """Every scenario for every client."""
    return [
        anyio.run(one, client, n, duration, rate, pause, hint_ms)
        for rate, pause in SCENARIOS
        for client in clients
    ]


def table(runs: list[Run]) -> str:
    """The Markdown table of ``runs``, ratios against each client's fault-free run."""
    base = {r.client: r.seconds for r in runs if r.rate_429 == 0}
    lines = [
        "| 429s | Retry-After | client | seconds | vs no faults | requests | peak req/s "
        "| sent during a pause | tasks lost | aio88 concurrency (min / end) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        concurrency = (
            f"{min(c for _, c in r.concurrency)} / {r.concurrency[-1][1]}" if r.concurrency else "-"
        )
        lines.append(
            f"| {r.rate_429:.0%} | {'-' if r.retry_after is None else f'{r.retry_after:g} s'} "
            f"| {r.client} | {r.seconds:.1f} | {r.seconds / base[r.client]:.2f}x "
            f"| {r.requests:,} | {r.peak_per_second:,} "
            f"| {'-' if r.during_pauses is None else r.during_pauses} | {r.errors} "
            f"| {concurrency} |"
        )
    return "\n".join(lines)


def trace_table(runs: list[Run]) -> str:
    """aio88's concurrency, second by second, in each scenario."""
    rows = [r for r in runs if r.client == "aio88"]
    width = max(int(r.concurrency[-1][0]) + 1 for r in rows if r.concurrency)
    head = "| 429s | Retry-After | " + " | ".join(f"{s} s" for s in range(width)) + " |"
    lines = [head, "|---:|---:|" + "---:|" * width]
    for r in rows:
        by_second: dict[int, int] = {}
        for t, c in r.concurrency:
            by_second.setdefault(int(t), c)
        cells = " | ".join(str(by_second.get(s, "")) for s in range(width))
        pause = "-" if r.retry_after is None else f"{r.retry_after:g} s"
        lines.append(f"| {r.rate_429:.0%} | {pause} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="tasks (200)")
    parser.add_argument(
        "--duration", type=float, nargs=2, default=(2.0, 6.0), help="seconds per task (2 6)"
    )
    parser.add_argument("--clients", nargs="+", default=CLIENTS, choices=CLIENTS)
    parser.add_argument(
        "--hint-ms",
        type=int,
        default=500,
        help="the server's poll-after hint (500); 0 sends none (each client's own schedule)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    runs = run(args.n, tuple(args.duration), args.clients, args.hint_ms or None)
    if args.json:
        print(json.dumps([asdict(r) for r in runs]))
    else:
        print(table(runs))
        print()
        print(trace_table(runs))


if __name__ == "__main__":
    main()
