"""Slow, independent pieces of a test module run at once, in the background.

Some tests mostly wait: on processes starting, on a schedule's first poll two seconds after
a create. Run one after the other, a module of them takes the sum of their waits. Here a
module-scoped fixture starts every selected one at once (:meth:`SideBySide.start`) and each
test awaits its own piece (:meth:`SideBySide.result`), which re-raises the piece's failure
with its traceback: the module takes about as long as its longest piece.

Each piece must be independent of the others: its own emulator, its own folders.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

__all__ = ["SideBySide", "side_by_side"]


class SideBySide:
    """Pieces of work running in the background of a module, by key."""

    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg
        self._done: dict[str, anyio.Event] = {}
        self._results: dict[str, Any] = {}
        self._errors: dict[str, BaseException] = {}

    def start(self, key: str, work: Callable[[], Awaitable[Any]]) -> None:
        """Start ``work`` in the background under ``key`` (once: a key started is kept)."""
        if key in self._done:
            return
        done = self._done[key] = anyio.Event()

        async def run() -> None:
            try:
                self._results[key] = await work()
            except Exception as exc:  # handed to the test that awaits it
                self._errors[key] = exc
            finally:
                done.set()

        self._tg.start_soon(run, name=f"side by side: {key}")

    async def result(self, key: str) -> Any:
        """Wait for the work started under ``key``; its result, or its failure raised."""
        await self._done[key].wait()
        if key in self._errors:
            raise self._errors[key]
        return self._results[key]


@asynccontextmanager
async def side_by_side() -> AsyncIterator[SideBySide]:
    """A :class:`SideBySide` whose work is cancelled on leaving, if still running."""
    async with anyio.create_task_group() as tg:
        yield SideBySide(tg)
        tg.cancel_scope.cancel()
