"""Typical user code, type-checked by ``mypy --strict aio88 tests`` (never run): every
public type a user meets must be exact enough to need no ``type: ignore`` and no cast."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from aio88 import (
    APIConnectionError,
    Client,
    DownloadError,
    FileInput,
    GenerationTask,
    Kind,
    NotFoundError,
    Outcome,
    Poller,
    RateLimitError,
    Schedule,
    Task,
    TaskFailedError,
    Video,
    WaitTimeoutError,
)

#: Where the examples put what they read (user code would show it).
seen: list[object] = []


async def web_backend(poller: Poller, video_id: str, generation_id: str) -> None:
    """A web backend awaits tasks of both kinds on a long-lived poller."""
    video: Video = await poller.wait(video_id, kind="video")
    default_kind: Video = await poller.wait(video_id)
    generation: GenerationTask = await poller.wait(generation_id, kind="generation")
    again: Video = await poller.wait(video)
    same: GenerationTask = await poller.wait(generation, timeout=30)
    seen.extend([default_kind.url, again.progress, same.status.value])


async def handle_errors(client: Client, reference: FileInput) -> str | None:
    """Create, wait and download, handling what can go wrong, with exact types."""
    try:
        video = await client.videos.create(prompt="a fox", input_reference=reference)
        video = await client.videos.wait(video.id, timeout=600)
        path: Path = await client.download(video, "fox.mp4")
        return str(path)
    except TaskFailedError as exc:
        failed: Task = exc.task
        return failed.error.message if failed.error else None
    except WaitTimeoutError as exc:
        last: Task | None = exc.task
        return last.id if last else None
    except DownloadError as exc:
        where: Path | None = exc.path
        return str(where)
    except RateLimitError as exc:
        return f"retry after {exc.retry_after}"
    except (NotFoundError, APIConnectionError) as exc:
        return exc.message


async def batch(ids: list[str], kind: Kind) -> list[Outcome]:
    """A batch pipeline watches many tasks and downloads them."""
    results: list[Outcome] = []
    async with Client() as client:
        generation: GenerationTask = await client.generations.retrieve(ids[0])
        seen.append(generation.id)
        async with client.watch(
            ids, kind=kind, schedule=Schedule.fixed(5), download_dir="videos"
        ) as outcomes:
            async for outcome in outcomes:
                task: Task | None = outcome.task
                saved: Path | None = outcome.path
                seen.extend([outcome.ok, task, saved, outcomes.pending])
                results.append(outcome)
    return results


async def stream(client: Client, video_id: str) -> int:
    """Streaming a video with resume, through tracing and a proxy."""
    size = 0
    async with client.videos.content(video_id, resume=True) as body:
        async for chunk in body:
            size += len(chunk)
    return size


def configured() -> Client:
    """The networking options type-check."""
    return Client(
        "sk-...",
        proxy="http://proxy.example:3128",
        ssl=False,
        trace_configs=[aiohttp.TraceConfig()],
        headers={"User-Agent": "my-app/1.0"},
    )


if __name__ == "__main__":  # pragma: no cover - type-checked, never run
    asyncio.run(batch(["task_1"], "video"))
