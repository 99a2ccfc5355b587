"""Download throughput and memory: aio88 vs curl vs openai-python, one server, one run.

nginx on loopback serves a 256 MiB and a 1 GiB file at ``/v1/videos/{id}/content``. Each
client downloads each file in its own process (so peak RSS is that client's alone),
alternating over ``--rounds`` (who goes first rotates; one unmeasured warm-up download per
file first); medians and bests are reported. For aio88 the event loop's lag is
measured too (a 1 ms ticker's worst lateness), and ``--chunks`` sweeps the buffer size.
``aio88-session`` is aio88 given the caller's own aiohttp session: its fallback path,
which reads the body through aiohttp.

    python -m benchmarks.bench_download [--sizes 256 1024] [--rounds 3] [--chunks ...]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._server import StaticServer

CLIENTS = ["aio88", "curl", "openai-default", "openai-aiohttp", "aio88-session"]


# -- the child: one client, one download -----------------------------------------------


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _aio88(
    base_url: str, name: str, dest: Path, chunk: int, own_session: bool = False
) -> dict[str, float]:
    """aio88's download; with ``own_session``, through a caller's aiohttp session (the
    aiohttp fallback path instead of aio88's own body reader)."""
    import aiohttp

    from aio88 import Client

    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            start = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - start - 0.001)

    session = aiohttp.ClientSession() if own_session else None
    try:
        async with Client("sk-bench", base_url=base_url, session=session) as client:
            tick = asyncio.create_task(ticker())
            client._downloader.block_size = chunk  # the sweep's knob; not a user setting
            await client.download(name, dest)
            stop.set()
            await tick
    finally:
        if session is not None:
            await session.close()
    lags.sort()
    return {"lag_max_ms": lags[-1] * 1000, "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] * 1000}


async def _openai(base_url: str, name: str, dest: Path, backend: str) -> dict[str, float]:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    http = DefaultAioHttpClient() if backend == "aiohttp" else None
    async with AsyncOpenAI(api_key="sk-bench", base_url=base_url + "/v1", http_client=http) as c:
        async with c.videos.with_streaming_response.download_content(name) as response:
            await response.stream_to_file(dest)
    return {}


def _import_client(client: str) -> None:
    """Import the client's libraries up front, so that the timing is the work alone."""
    if client.startswith("aio88"):
        import aio88  # noqa: F401
    elif client.startswith("openai"):
        import openai  # noqa: F401
        from openai import DefaultAioHttpClient  # noqa: F401
    else:
        import aiohttp  # noqa: F401


def child(client: str, base_url: str, name: str, dest: Path, chunk: int) -> dict[str, Any]:
    """Download once with `client`; report seconds, CPU seconds, peak RSS."""
    _import_client(client)  # imports are not part of what is timed
    baseline = _rss_mib()
    started, cpu = time.perf_counter(), time.process_time()
    extra: dict[str, float] = {}
    if client == "curl":
        subprocess.run(
            ["curl", "-s", "-o", str(dest), f"{base_url}/v1/videos/{name}/content"], check=True
        )
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        cpu_used = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    else:
        if client.startswith("aio88"):
            extra = asyncio.run(_aio88(base_url, name, dest, chunk, client == "aio88-session"))
        else:
            asyncio.run(_openai(base_url, name, dest, client.split("-")[1]))
        peak = _rss_mib()
        cpu_used = time.process_time() - cpu
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu": cpu_used,
        "peak_rss_mib": peak,
        "baseline_rss_mib": 0.0 if client == "curl" else baseline,
        **extra,
    }


# -- the parent: server, rounds, table -------------------------------------------------


#: Where downloads are written: tmpfs when there is one, so that the disk's writeback
#: (the same for every client, and very noisy on shared machines) is not what is measured.
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


def run_one(client: str, server: StaticServer, name: str, size: int, chunk: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="aio88-dl-", dir=SCRATCH))
    dest = tmp / "out.mp4"
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_download",
                "--child",
                client,
                server.base_url,
                name,
                str(dest),
                str(chunk),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        if dest.stat().st_size != size:
            raise RuntimeError(f"{client}: wrote {dest.stat().st_size} of {size} bytes")
        with open(dest, "rb") as got, open(server.path_of(name), "rb") as want:
            if (
                hashlib.file_digest(got, "sha256").digest()
                != hashlib.file_digest(want, "sha256").digest()
            ):
                raise RuntimeError(f"{client}: the file differs")
        result["mb_s"] = size / 1e6 / result["seconds"]
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(sizes_mib: list[int], rounds: int, chunks: list[int], clients: list[str]) -> dict[str, Any]:
    """Every client on every size, alternating, best of `rounds`; plus the chunk sweep."""
    files = {f"f{mib}": mib * 2**20 for mib in sizes_mib}
    rows: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    with StaticServer(files=files) as server:
        for name, size in files.items():
            runs: dict[str, list[dict[str, Any]]] = {}
            present = [c for c in clients if c != "curl" or shutil.which("curl")]
            run_one(present[0], server, name, size, chunks[0])  # warm-up, not counted
            for round_number in range(rounds):
                # Rotate who goes first, so no client always meets the same machine state.
                shift = round_number % len(present)
                for client in present[shift:] + present[:shift]:
                    runs.setdefault(client, []).append(
                        run_one(client, server, name, size, chunks[0])
                    )
            for client, results in runs.items():
                best = min(results, key=lambda r: r["seconds"])
                median = statistics.median(r["mb_s"] for r in results)
                cpu = statistics.median(r["cpu"] for r in results)
                rows.append(
                    {
                        "client": client,
                        "size_mib": size >> 20,
                        **best,
                        "median_mb_s": median,
                        "cpu": cpu,
                    }
                )
        name, size = next(iter(files.items()))
        by_chunk: dict[int, list[dict[str, Any]]] = {chunk: [] for chunk in chunks}
        for round_number in range(rounds):
            shift = round_number % len(chunks)  # interleaved and rotated, as above
            for chunk in chunks[shift:] + chunks[:shift]:
                by_chunk[chunk].append(run_one("aio88", server, name, size, chunk))
        for chunk, results in by_chunk.items():
            sweep.append(
                {
                    "chunk_kib": chunk >> 10,
                    "mb_s": max(r["mb_s"] for r in results),
                    "median_mb_s": statistics.median(r["mb_s"] for r in results),
                    "cpu": statistics.median(r["cpu"] for r in results),
                    "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
                }
            )
        kind = server.kind
    return {"server": kind, "rows": rows, "sweep": sweep}


def table(report: dict[str, Any]) -> str:
    """Markdown tables: clients side by side, and the chunk-size sweep."""
    lines = [
        f"server: {report['server']}",
        "",
        "| file | client | best MB/s | median MB/s | median vs curl | CPU s (median) "
        "| peak RSS MiB | RSS growth MiB | loop lag max / p99 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_size: dict[int, dict[str, dict[str, Any]]] = {}
    for row in report["rows"]:
        by_size.setdefault(row["size_mib"], {})[row["client"]] = row
    for size, rows in by_size.items():
        curl = rows.get("curl", {}).get("median_mb_s")
        for client, r in rows.items():
            ratio = f"{r['median_mb_s'] / curl:.2f}x" if curl else "-"
            lag = f"{r['lag_max_ms']:.1f} / {r['lag_p99_ms']:.2f}" if "lag_max_ms" in r else "-"
            growth = "-" if client == "curl" else f"{r['peak_rss_mib'] - r['baseline_rss_mib']:.1f}"
            lines.append(
                f"| {size} MiB | {client} | {r['mb_s']:.0f} | {r['median_mb_s']:.0f} | "
                f"{ratio} | {r['cpu']:.2f} | "
                f"{r['peak_rss_mib']:.0f} | {growth} | {lag} |"
            )
    lines += [
        "",
        "| aio88 buffer | best MB/s | median MB/s | CPU s (median) | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s['chunk_kib']} KiB | {s['mb_s']:.0f} | {s['median_mb_s']:.0f} | "
        f"{s['cpu']:.2f} | {s['peak_rss_mib']:.0f} |"
        for s in report["sweep"]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        client, base_url, name, dest, chunk = argv[1:6]
        print(json.dumps(child(client, base_url, name, Path(dest), int(chunk))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="MiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=[1 << 20, 256 << 10, 512 << 10, 2 << 20, 4 << 20]
    )
    parser.add_argument("--clients", nargs="+", default=CLIENTS, choices=CLIENTS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.sizes, args.rounds, args.chunks, args.clients)
    print(json.dumps(report) if args.json else table(report))


if __name__ == "__main__":
    main()
