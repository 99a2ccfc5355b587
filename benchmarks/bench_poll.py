"""Cost per poll: aio88's Poller vs openai-python vs a plain aiohttp loop, one server.

N retrievals (default 20,000) of terminal tasks at concurrency C (default 64) against nginx
serving fixed JSON on loopback (so the client is what is measured). Each client runs in its
own process with the same N and C; clients alternate over several rounds. Reported: the
median requests/s, CPU µs per request, peak RSS, and ratios to aio88.

- ``aio88``: ``client.watch(ids)``, the path users run, decoding and retries included;
- ``openai-default`` / ``openai-aiohttp``: ``AsyncOpenAI.videos.retrieve`` with httpx, and
  with ``DefaultAioHttpClient``;
- ``aiohttp-plain``: what a user writes by hand: ``session.get`` + ``json.loads``.

    python -m benchmarks.bench_poll [-n 20000] [-c 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from ._server import StaticServer

CLIENTS = ["aio88", "openai-default", "openai-aiohttp", "aiohttp-plain"]


async def _aio88(base_url: str, n: int, c: int) -> int:
    from aio88 import Client

    ok = 0
    async with Client("sk-bench", base_url=base_url) as client:
        async with client.watch((f"task_{i}" for i in range(n)), concurrency=c) as outcomes:
            async for outcome in outcomes:
                ok += outcome.ok
    return ok


async def _openai(base_url: str, n: int, c: int, backend: str) -> int:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    http = DefaultAioHttpClient() if backend == "aiohttp" else None
    ids = iter(range(n))
    ok = 0
    api = base_url + "/v1"
    async with AsyncOpenAI(api_key="sk-bench", base_url=api, http_client=http) as client:

        async def worker() -> None:
            nonlocal ok
            for i in ids:
                video = await client.videos.retrieve(f"task_{i}")
                ok += video.status in ("completed", "succeeded")

        await asyncio.gather(*(worker() for _ in range(c)))
    return ok


async def _plain(base_url: str, n: int, c: int) -> int:
    import aiohttp

    ids = iter(range(n))
    ok = 0
    headers = {"Authorization": "Bearer sk-bench"}
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal ok
            for i in ids:
                async with session.get(f"{base_url}/v1/videos/task_{i}", headers=headers) as r:
                    body = json.loads(await r.read())
                ok += body["status"] in ("completed", "succeeded")

        await asyncio.gather(*(worker() for _ in range(c)))
    return ok


def _import_client(client: str) -> None:
    """Import the client's libraries up front, so that the timing is the work alone."""
    if client == "aio88":
        import aio88  # noqa: F401
    elif client.startswith("openai"):
        import openai  # noqa: F401
        from openai import DefaultAioHttpClient  # noqa: F401
    else:
        import aiohttp  # noqa: F401


def child(client: str, base_url: str, n: int, c: int) -> dict[str, Any]:
    """Run one client once; report wall time, CPU and peak RSS."""
    _import_client(client)  # imports are not part of what is timed
    started, cpu = time.perf_counter(), time.process_time()
    before = resource.getrusage(resource.RUSAGE_SELF)
    if client == "aio88":
        ok = asyncio.run(_aio88(base_url, n, c))
    elif client == "aiohttp-plain":
        ok = asyncio.run(_plain(base_url, n, c))
    else:
        ok = asyncio.run(_openai(base_url, n, c, client.split("-")[1]))
    seconds = time.perf_counter() - started
    cpu_used = time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF)
    if ok != n:
        raise RuntimeError(f"{client}: {ok} of {n} retrievals succeeded")
    return {
        "seconds": seconds,
        "requests_per_s": n / seconds,
        "cpu_us_per_request": cpu_used / n * 1e6,
        "user_us_per_request": (after.ru_utime - before.ru_utime) / n * 1e6,
        "system_us_per_request": (after.ru_stime - before.ru_stime) / n * 1e6,
        "peak_rss_mib": after.ru_maxrss / 1024,
    }


def run(n: int, c: int, rounds: int, clients: list[str]) -> dict[str, Any]:
    """All clients, alternating, `rounds` times; medians per client."""
    runs: dict[str, list[dict[str, Any]]] = {client: [] for client in clients}
    with StaticServer() as server:
        for _ in range(rounds):
            for client in clients:
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.bench_poll",
                        "--child",
                        client,
                        server.base_url,
                        str(n),
                        str(c),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                runs[client].append(json.loads(out.strip().splitlines()[-1]))
        kind = server.kind
    rows = []
    for client, results in runs.items():
        rows.append(
            {
                "client": client,
                "requests_per_s": statistics.median(r["requests_per_s"] for r in results),
                "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in results),
                "user_us": statistics.median(r["user_us_per_request"] for r in results),
                "system_us": statistics.median(r["system_us_per_request"] for r in results),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
            }
        )
    return {"server": kind, "n": n, "concurrency": c, "rounds": rounds, "rows": rows}


def table(report: dict[str, Any]) -> str:
    """Markdown: one row per client, with aio88's speed-up over each."""
    rows = {r["client"]: r for r in report["rows"]}
    ours = rows.get("aio88")
    lines = [
        f"{report['n']:,} retrievals at concurrency {report['concurrency']}, median of "
        f"{report['rounds']} rounds; server: {report['server']}",
        "",
        "| client | requests/s | CPU µs/request (user + system) | peak RSS MiB "
        "| aio88 is faster by |",
        "|---|---:|---:|---:|---:|",
    ]
    for client, r in rows.items():
        ratio = f"{ours['requests_per_s'] / r['requests_per_s']:.2f}x" if ours else "-"
        lines.append(
            f"| {client} | {r['requests_per_s']:,.0f} | {r['cpu_us_per_request']:.0f} "
            f"({r['user_us']:.0f} + {r['system_us']:.0f}) | "
            f"{r['peak_rss_mib']:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        client, base_url, n, c = argv[1:5]
        print(json.dumps(child(client, base_url, int(n), int(c))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="retrievals per client and round")
    parser.add_argument("-c", type=int, default=64, help="concurrency")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", nargs="+", default=CLIENTS, choices=CLIENTS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.n, args.c, args.rounds, args.clients)
    print(json.dumps(report) if args.json else table(report))


if __name__ == "__main__":
    main()
