"""The ``.part`` writer of a download: blocks appended in order, in a thread of its own.

The event loop must not wait on the disk, and the disk must not wait on the event loop.
So the loop hands each block over (:meth:`PartWriter.put` returns at once unless
``max_pending`` bytes are already waiting) and the writer thread takes the next one as soon
as the last is written. The thread calls back into the loop only when the loop is waiting
for room: an earlier design hopped to a worker thread and back for every block, and each
hop waited for the loop, busy reading the network (a third of the time at 1 GB/s).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["PartWriter"]


class PartWriter:
    """Appends blocks to a ``.part`` file from ``offset`` on, hashing them if asked.

    Args:
        part: The file (created, or truncated to ``offset``, by :meth:`open`).
        offset: Where writing starts (the bytes before are kept: a resume).
        hasher: A ``hashlib`` object updated with every block, or None.
        max_pending: Bytes handed over but not written yet beyond which :meth:`put` waits
            (so memory stays flat while the disk is behind).
    """

    def __init__(self, part: Path, offset: int, hasher: Any, *, max_pending: int) -> None:
        self.part = part
        self.offset = offset
        self.hasher = hasher
        self.max_pending = max_pending
        self._file: IO[bytes] | None = None
        self._queue: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()  # guards _pending, written and _room across threads
        self._room: asyncio.Future[None] | None = None
        self._pending = 0
        #: Bytes written by this writer (after ``offset``).
        self.written = 0
        #: The disk's error, if a write failed (later blocks are then dropped).
        self.error: OSError | None = None

    # -- in a worker thread --

    def open(self) -> None:
        """Open the file (blocking: call it in a worker thread)."""
        self._file = open(self.part, "r+b" if self.offset else "wb")  # noqa: SIM115
        self._file.seek(self.offset)
        self._file.truncate()

    def run(self, on_error: Callable[[], object]) -> None:
        """Write blocks as they come until :meth:`stop` (blocking: a worker thread's job).

        ``on_error`` is called on the event loop if a write fails."""
        file, hasher, lock = self._file, self.hasher, self._lock
        assert file is not None
        while (block := self._queue.get()) is not None:
            failed = False
            size = sum(map(len, block))
            if self.error is None:
                try:
                    file.writelines(block)
                    if hasher is not None:
                        for piece in block:
                            hasher.update(piece)
                except OSError as exc:
                    self.error = exc
                    failed = True
            with lock:
                self._pending -= size
                if self.error is None:
                    self.written += size
                room, self._room = self._room, None
            if room is not None:
                self._loop.call_soon_threadsafe(_wake, room)
            if failed:
                self._loop.call_soon_threadsafe(on_error)

    def close(self, fsync: bool) -> None:
        """Flush (and with ``fsync``, sync) and close the file (blocking)."""
        if self._file is not None:
            try:
                self._file.flush()
                if fsync:
                    os.fsync(self._file.fileno())
            finally:
                self._file.close()
                self._file = None

    # -- on the event loop --

    async def put(self, block: list[bytes]) -> None:
        """Hand a block (pieces to write in order) over; waits only while the disk is
        behind."""
        while True:
            with self._lock:
                if self._pending < self.max_pending or self.error is not None:
                    break
                room = self._room = self._loop.create_future()
            await room
        self.put_nowait(block)

    def put_nowait(self, block: list[bytes]) -> None:
        """Hand a block over at once (for what is left when a download stops)."""
        with self._lock:
            self._pending += sum(map(len, block))
        self._queue.put(block)

    def stop(self) -> None:
        """Let :meth:`run` return once every block handed over is written."""
        self._queue.put(None)


def _wake(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)
