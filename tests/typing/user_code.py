"""Typical user code, type-checked by ``mypy --strict aio88 tests`` (never run): every
public type a user meets must be exact enough to need no ``type: ignore`` and no cast."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from typing_extensions import assert_type

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
    Watch,
)

#: Where the examples put what they read (user code would show it).
seen: list[object] = []


async def web_backend(client: Client, video_id: str, generation_id: str, kind: Kind) -> None:
    """A web backend awaits tasks of both kinds on a long-lived poller: the result types
    are exact (``assert_type`` fails on ``Any`` or a wider union)."""

    def on_update(task: Task) -> None:
        seen.append(task.progress)

    async with client.poller(concurrency=16, on_update=on_update) as poller:
        assert_type(poller, Poller)
        video = await poller.wait(video_id, kind="video")
        assert_type(video, Video)
        assert_type(await poller.wait(video_id), Video)
        generation = await poller.wait(generation_id, kind="generation")
        assert_type(generation, GenerationTask)
        assert_type(await poller.wait(video), Video)
        assert_type(await poller.wait(generation, timeout=30), GenerationTask)
        assert_type(await poller.wait(video_id, kind=kind), GenerationTask | Video)
    assert_type(await client.videos.wait(video_id), Video)
    assert_type(await client.generations.retrieve(generation_id), GenerationTask)


async def handle_errors(client: Client, reference: FileInput) -> str | None:
    """Create, wait and download, handling what can go wrong, with exact types."""
    try:
        video = await client.videos.create(prompt="a fox", input_reference=reference)
        video = await client.videos.wait(video.id, timeout=600)
        path: Path = await client.download(video, "fox.mp4")
        return str(path)
    except TaskFailedError as exc:
        assert_type(exc.task, GenerationTask | Video)
        return exc.task.error.message if exc.task.error else None
    except WaitTimeoutError as exc:
        assert_type(exc.task, GenerationTask | Video | None)
        return exc.task.id if exc.task else None
    except DownloadError as exc:
        assert_type(exc.path, Path | None)
        return str(exc.path)
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
            assert_type(outcomes, Watch)
            outcomes.expect(1)  # one more, still being created
            created = await client.videos.create(prompt="one more")
            outcomes.add([created], fresh=True)
            async for outcome in outcomes:
                assert_type(outcome.task, GenerationTask | Video | None)
                assert_type(outcome.path, Path | None)
                if isinstance(outcome.error, TaskFailedError):
                    seen.append(outcome.error.task.error)
                seen.extend([outcome.ok, outcomes.pending])
                results.append(outcome)
    return results


async def stream(client: Client, video_id: str) -> int:
    """Streaming a video, resumed if the connection breaks."""
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
