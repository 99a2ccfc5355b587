"""Run the emulator by hand: ``python -m aio88.testing --port 8088 --dialect newapi``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from ._emulator import Emulator
from ._faults import Faults


def build_parser() -> argparse.ArgumentParser:
    """The command line of the emulator."""
    parser = argparse.ArgumentParser(
        prog="python -m aio88.testing", description="Serve an emulated 88API on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8088, help="API port; 0 picks one (default 8088)"
    )
    parser.add_argument("--dialect", choices=["docs", "newapi"], default="docs")
    parser.add_argument("--api-key", default="sk-test", help="the key it accepts (default sk-test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--duration",
        type=float,
        nargs=2,
        default=(5.0, 20.0),
        metavar=("LOW", "HIGH"),
        help="seconds a task takes, drawn uniformly (default 5 20)",
    )
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument(
        "--rate-429", type=float, default=0.0, help="share of requests answered 429"
    )
    parser.add_argument("--retry-after", type=float, default=None)
    parser.add_argument("--rate-500", type=float, default=0.0)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--truncate-rate", type=float, default=0.0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per answer")
    parser.add_argument(
        "--content-size", type=int, default=None, help="serve N deterministic bytes"
    )
    parser.add_argument(
        "--any-id", action="store_true", help="answer unknown ids as finished tasks (load tests)"
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    """Start the emulator and serve until SIGINT or SIGTERM."""
    # Handlers first, before the ready line: a process started in the background by a
    # non-interactive shell inherits SIGINT as ignored, and a signal sent as soon as the
    # ready line is read must not be lost.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(signum, stop.set)
    faults = Faults(
        rate_429=args.rate_429,
        retry_after=args.retry_after,
        rate_500=args.rate_500,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        latency=args.latency,
    )
    async with Emulator(
        api_key=args.api_key,
        dialect=args.dialect,
        host=args.host,
        port=args.port,
        seed=args.seed,
        duration=tuple(args.duration),
        failure_rate=args.failure_rate,
        faults=faults,
        content_size=args.content_size,
        any_id=args.any_id,
    ) as emulator:
        print(f"88API emulator ({args.dialect} dialect) at {emulator.base_url}", flush=True)
        print(
            f"  media origin {emulator.media_url}; key {args.api_key!r}; Ctrl-C stops", flush=True
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
