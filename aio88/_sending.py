"""Whether a create's request left the process: what the transport tells a caller while
one create is being sent, so that "maybe created, maybe billed" is said only when true.

88API cannot be asked whether a create arrived, so a caller that keeps a ledger (``aio88
run``) must commit "this create may reach the server" *before* its first byte is written,
and must know afterwards whether any byte was. The transport marks both moments on a
:class:`SendMark`: from aiohttp's request-tracing signals on its own sessions (exact), or
around the whole request when it sends through a caller's session (cautious).

A caller hands its mark to the transport through :func:`marking`, a context variable, so
that the resources and the facade between them need not carry it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

__all__ = ["SendMark", "current_mark", "marking"]

Hook = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


class SendMark:
    """The sending of one create, as the transport sees it, try after try.

    Args:
        before_write: Awaited just before the request's first byte is written (the
            connection is made, any backoff is over): commit there that the create may
            reach the server. If it raises, nothing is written.
        not_taken: Awaited when a try ended and the server provably did not take the
            request (nothing was written, or the server answered 429) and the transport
            will try again: undo that commit. Not awaited for the last try; the caller
            reads :attr:`sent` and the exception then.
    """

    __slots__ = ("_before_write", "_confirm", "_not_taken", "committed", "sent")

    def __init__(self, before_write: Hook | None = None, not_taken: Hook | None = None) -> None:
        self._before_write = before_write or _nothing
        self._not_taken = not_taken or _nothing
        self.sent = False
        """Some of the current try's request was handed to a connection: the server may
        have it. ``False`` means provably not sent."""
        self.committed = False
        """``before_write`` ran (or the caller committed ahead, :meth:`claimed`) and was not
        undone since."""
        self._confirm = False

    def claimed(self) -> None:
        """The caller committed before sending (a shared ledger's claim). ``before_write``
        still runs before the first write, to confirm that the commit holds: the wait
        between (a rate budget, a connection, a process stopped) may have been long
        enough for another worker to take the job."""
        self.committed = True
        self._confirm = True

    def new_try(self) -> None:
        """A new try (or redirect hop) starts: nothing of it is sent yet."""
        self.sent = False

    async def writing(self) -> None:
        """The request is about to be written: commit, unless committed and not undone
        since (a redirect hop, a retry after a failure that may have reached the server)."""
        if not self.committed or self._confirm:
            self._confirm = False
            await self._before_write()
            self.committed = True

    def wrote(self) -> None:
        """Some of the request was handed to the connection."""
        self.sent = True

    async def not_taken(self) -> None:
        """The try ended without the server taking the request; another will follow."""
        self.sent = False
        if self.committed:
            await self._not_taken()
            self.committed = False


#: The mark of the create being sent in this context, set by :func:`marking`.
current_mark: contextvars.ContextVar[SendMark | None] = contextvars.ContextVar(
    "aio88_send_mark", default=None
)


@contextmanager
def marking(mark: SendMark) -> Iterator[SendMark]:
    """Within this block, the transport reports a create's sending on ``mark``."""
    token = current_mark.set(mark)
    try:
        yield mark
    finally:
        current_mark.reset(token)
