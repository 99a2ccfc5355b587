"""Decoding cost: aio88's msgspec decoders vs json.loads + openai-python's pydantic Video.

The two task shapes in both dialects: the documented flat objects and the server's
envelope with upper-case statuses. openai-python's column is what its SDK does with a
response (``json.loads``, then ``construct_type`` into its pydantic ``Video``); it has no
model for the generation shapes, whose row shows ``json.loads`` alone.

    python -m benchmarks.bench_decode [--number 100000]
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any

from aio88._models import decode_generation, decode_video

from ._server import GENERATION_NEWAPI, VIDEO_DOCS

BODIES: dict[str, tuple[str, bytes]] = {
    "video, docs": ("video", json.dumps(VIDEO_DOCS).encode()),
    "video, newapi": (
        "video",
        json.dumps(
            {
                **VIDEO_DOCS,
                "task_id": "task_bench",
                "status": "completed",
                "completed_at": 1712697700,
                "metadata": {"url": "https://cdn.example/v.mp4"},
            }
        ).encode(),
    ),
    "generation, docs": (
        "generation",
        json.dumps(
            {
                "task_id": "abcd1234efgh",
                "status": "succeeded",
                "format": "mp4",
                "url": "https://example.com/video.mp4",
                "metadata": {
                    "duration": 5,
                    "fps": 30,
                    "height": 512,
                    "width": 512,
                    "seed": 20231234,
                },
                "error": None,
            }
        ).encode(),
    ),
    "generation, newapi": ("generation", json.dumps(GENERATION_NEWAPI).encode()),
}


def run(number: int) -> list[dict[str, Any]]:
    """µs per decode for each shape and decoder (best of 5 repeats)."""
    from openai._models import construct_type
    from openai.types import Video as OpenAIVideo

    rows = []
    for name, (kind, body) in BODIES.items():
        ours = decode_video if kind == "video" else decode_generation
        timings = {
            "aio88": lambda ours=ours, body=body: ours(body).status,
            "json.loads": lambda body=body: json.loads(body),
        }
        if kind == "video":
            # What the SDK does with a response: construct, without validation (validation
            # would reject the docs dialect's "succeeded").
            timings["json.loads + openai Video"] = lambda body=body: (
                construct_type(type_=OpenAIVideo, value=json.loads(body)).status
            )
        row: dict[str, Any] = {"shape": name}
        for label, fn in timings.items():
            best = min(timeit.repeat(fn, number=number, repeat=5))
            row[label] = best / number * 1e6
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: µs per decode, and aio88's speed-up over the pydantic path."""
    lines = [
        "| shape | aio88 µs | json.loads µs | json.loads + openai Video µs | aio88 vs openai |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        peer = r.get("json.loads + openai Video")
        ours = r["aio88"]
        peer_text = "-" if peer is None else f"{peer:.2f}"
        ratio = "-" if peer is None else f"{peer / ours:.1f}x"
        lines.append(
            f"| {r['shape']} | {ours:.2f} | {r['json.loads']:.2f} | {peer_text} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.number)
    print(json.dumps(rows) if args.json else table(rows))


if __name__ == "__main__":
    main()
