"""A download's files on disk: ``<dest>.part`` while it grows, ``dest`` once verified.

:class:`PartFile` is the value the download steps share (where, what checksum, whom to
tell of progress, whether to fsync) instead of passing those one by one, with the
blocking file operations each step needs. Every method that touches the disk blocks:
call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import DOWNLOAD_BLOCK_SIZE
from ._errors import DownloadError

__all__ = ["PartFile", "Progress", "file_facts", "sha256_matches"]

#: Called with ``(bytes_done, bytes_total or None)`` as a download progresses.
Progress = Callable[[int, int | None], object]

#: The extended attribute that keeps a ``.part``'s ETag or Last-Modified for ``If-Range``.
_XATTR = "user.aio88.validator"


def file_facts(path: Path) -> tuple[int, str]:
    """(size, hex SHA-256) of a file (blocking: call it in a worker thread)."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as existing:
        while block := existing.read(DOWNLOAD_BLOCK_SIZE):
            hasher.update(block)
            size += len(block)
    return size, hasher.hexdigest()


def sha256_matches(path: Path, expected: str) -> bool:
    """Whether the file's SHA-256 is ``expected`` (hex, any case)."""
    return file_facts(path)[1] == expected.lower()


@dataclass(frozen=True)
class PartFile:
    """One download's destination, and how it is to be checked and reported.

    Attributes:
        dest: The finished file.
        sha256: The expected hex SHA-256, or None.
        on_progress: Told of bytes on disk, or None.
        fsync: Flush the file and its folder to disk before the download returns.
        part: ``<dest>.part``, where the bytes go until they are verified.
    """

    dest: Path
    sha256: str | None = None
    on_progress: Progress | None = None
    fsync: bool = False
    part: Path = field(init=False)
    lock: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "part", self.dest.with_name(self.dest.name + ".part"))
        object.__setattr__(self, "lock", self.dest.with_name(self.dest.name + ".lock"))

    def inspect(self) -> tuple[bool, bool]:
        """(dest is a directory, dest exists)."""
        return self.dest.is_dir(), self.dest.exists()

    def try_lock(self) -> int | None:
        """Take ``<dest>.lock`` (``flock``, exclusive) so that no other download, in this
        process or another sharing the folder, writes the same ``.part``; the lock's file
        descriptor, or None when another download holds it now.

        Raises:
            DownloadError: The lock file cannot be made (no permission, say).
        """
        try:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self.disk_error(exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder before us removes the file as it lets go: a lock on that old
            # file guards nothing, so it only counts if the name is still ours.
            if os.fstat(fd).st_ino == os.stat(self.lock).st_ino:
                return fd
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)
        return None

    def unlock(self, fd: int) -> None:
        """Let go of :meth:`try_lock`'s lock, removing its file first (see there)."""
        try:
            self.lock.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def make_folder(self) -> None:
        """Create ``dest``'s folder and the missing ones above it, as
        ``watch(download_dir=...)`` does for its folder.

        Raises:
            DownloadError: It cannot be created (a file is in the way, no permission).
        """
        folder = self.dest.parent
        try:
            # exist_ok: another download may create it at the same moment.
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(
                f"cannot create the folder {folder} for {self.dest.name}: {exc.strerror or exc}",
                path=self.dest,
            ) from exc

    def size(self) -> int:
        """Bytes in the ``.part`` (0 when there is none)."""
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def load_validator(self) -> str | None:
        """The ETag / Last-Modified saved beside the ``.part`` (an xattr), if any."""
        try:
            return os.getxattr(self.part, _XATTR).decode()
        except (OSError, AttributeError):
            return None

    def save_validator(self, validator: str | None) -> None:
        """Keep the server's validator for the next resume's ``If-Range``."""
        if validator is None:
            return
        # A filesystem without xattrs: the next resume goes without If-Range.
        with contextlib.suppress(OSError, AttributeError):
            os.setxattr(self.part, _XATTR, validator.encode())

    def hash_prefix(self, length: int) -> Any:
        """SHA-256 of the first ``length`` bytes already in the ``.part`` (a resume)."""
        hasher = hashlib.sha256()
        with open(self.part, "rb") as existing:
            remaining = length
            while remaining:
                block = existing.read(min(remaining, DOWNLOAD_BLOCK_SIZE))
                if not block:
                    break
                hasher.update(block)
                remaining -= len(block)
        return hasher

    def discard(self) -> None:
        """Remove the ``.part`` (its bytes cannot be continued)."""
        self.part.unlink(missing_ok=True)

    def finish(self) -> None:
        """Move the ``.part`` into place (atomically), syncing the folder if asked."""
        os.replace(self.part, self.dest)
        if self.fsync and hasattr(os, "O_DIRECTORY"):
            fd = os.open(self.dest.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def disk_error(self, exc: OSError) -> DownloadError:
        """A disk failure as a DownloadError that says what to do."""
        dest, part = self.dest, self.part
        if exc.errno == errno.ENOSPC:
            why = f"no space left on the device writing {part}"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = f"no permission to write {part}"
        elif exc.errno == errno.EISDIR:
            why = f"{dest} is a directory; give a file path"
        elif exc.errno == errno.ENOENT:
            why = f"the folder {dest.parent} does not exist"
        else:
            why = f"cannot write {part}: {exc.strerror or exc}"
        kept = (
            " The bytes so far stay in the .part file for a later resume." if part.exists() else ""
        )
        return DownloadError(f"download to {dest} failed: {why}.{kept}", path=dest)

    def report(self, done: int, total: int | None) -> None:
        """Tell ``on_progress``, if there is one."""
        if self.on_progress is not None:
            self.on_progress(done, total)
