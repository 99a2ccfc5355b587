"""The client: configuration, the session's lifecycle, and the assembly of the parts.

:class:`Client` is the facade. It builds the :class:`~aio88._http.Transport` (which opens
on first use) and hands it to the resources, the poller, the watch and the downloader;
none of them knows the client.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType

import aiohttp
from yarl import URL

from ._clock import Clock
from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_DOWNLOAD_CONCURRENCY,
    DEFAULT_DOWNLOAD_WORKERS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POLL_CONCURRENCY,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    DEFAULT_WAIT_TIMEOUT,
    ENV_API_KEY,
    ENV_BASE_URL,
    RetryPolicy,
    Timeouts,
    check_timeout,
)
from ._coordination import Coordinator
from ._download import Downloader, Source
from ._errors import DownloadError
from ._http import Transport
from ._models import Kind, Task
from ._outcome import Outcome
from ._partfile import Progress
from ._poll import Poller
from ._proxies import ProxySetting
from ._resources import Generations, Videos
from ._schedule import Schedule
from ._sessions import SSLSetting
from ._watch import Watch, open_watch
from ._webhooks import Webhooks, normalize_key

__all__ = ["Client"]


def budget_name(api_key: str, base_url: str) -> str:
    """What tells one key's fleet-wide rate budget from another's: a digest of the
    normalised key and the origin (the key itself never leaves the process)."""
    digest = hashlib.sha256(f"{URL(base_url).origin()} {normalize_key(api_key)}".encode())
    return digest.hexdigest()[:32]


def _resolve_base_url(base_url: str | None) -> str:
    raw = base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    url = URL(raw.strip())
    if url.scheme not in ("http", "https") or not url.host:
        source = "base_url" if base_url is not None else ENV_BASE_URL
        raise ValueError(
            f"{source} must be an absolute http(s) URL such as {DEFAULT_BASE_URL!r}, got {raw!r}"
        )
    if url.query_string or url.fragment:
        raise ValueError(f"base_url must not carry a query or fragment, got {raw!r}")
    root = str(url).rstrip("/")
    # openai-python's convention ends the base URL in /v1; aio88's paths carry it. Both
    # work, so that a URL copied from another client does not post to /v1/v1/videos.
    return root.removesuffix("/v1")


class Client:
    """An asyncio client for the 88API video-generation gateway.

    Use it as an async context manager, one per application::

        async with Client() as client:
            task = await client.generations.create(model="kling-v1", prompt="a red fox")
            task = await client.generations.wait(task.id)

    The aiohttp session is created when the client is entered (or on its first request)
    and closed by :meth:`aclose`; a closed client cannot be reopened.

    Args:
        api_key: The 88API key; read from ``AIO88_API_KEY`` when not given.
        base_url: The API's origin; ``AIO88_BASE_URL`` or ``https://88api.ai``. A
            trailing ``/v1`` (openai-python's convention) is taken off: aio88's paths
            carry it.
        timeouts: Per-request timeouts (:class:`Timeouts`).
        retry: When failed requests are retried (:class:`RetryPolicy`).
        max_connections: Most connections open at once.
        rate_limit: Requests per second for the whole client (every create, poll and
            download shares it); ``None`` for no steady limit. A 429 slows the whole
            client either way.
        headers: Extra headers for every API request (never sent to other origins). A
            ``User-Agent`` or ``Host`` here replaces the default one.
        proxy: A proxy URL for every request (``"http://user:pass@proxy:3128"``), or
            ``False`` to ignore the environment. By default, ``HTTPS_PROXY``,
            ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` are honoured (read once).
        ssl: An ``ssl.SSLContext`` (to trust a corporate CA, say), or ``False`` to skip
            certificate checks (logged as a warning). By default, the system's CAs, or
            ``SSL_CERT_FILE``.
        trace_configs: aiohttp ``TraceConfig`` objects that see every request the client
            sends (OpenTelemetry's aiohttp instrumentation, your own tracing).
        session: Your own ``aiohttp.ClientSession``; the client then does not close it,
            and its connector, TLS and tracing settings apply (so ``ssl`` and
            ``trace_configs`` cannot be given with it).
        download_concurrency: Most downloads streaming at once, across the client.
        fleet: Share the rate budget and the polling with other processes
            (``aio88.fleet.Fleet``, PostgreSQL): ``rate_limit`` and a 429's pause then hold
            for the whole fleet, and each awaited task is polled by one process, its end
            told to all. The client does not close it.

    Raises:
        ValueError: No API key, a malformed ``base_url`` or proxy, or a header (or key)
            with a line break in it.
    """

    generations: Generations
    """Tasks of the 88API format, ``/v1/video/generations``."""
    videos: Videos
    """Tasks of the OpenAI/Sora format, ``/v1/videos``."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        rate_limit: float | None = None,
        headers: Mapping[str, str] | None = None,
        proxy: ProxySetting = None,
        ssl: SSLSetting = None,
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
        session: aiohttp.ClientSession | None = None,
        download_concurrency: int = DEFAULT_DOWNLOAD_CONCURRENCY,
        fleet: Coordinator | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY, "")
        if not key.strip():
            raise ValueError(
                f"No API key: pass Client(api_key=...) or set the {ENV_API_KEY} environment "
                "variable"
            )
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if headers and any(name.lower() == "authorization" for name in headers):
            raise ValueError("pass the key as api_key, not as an Authorization header")
        if session is not None and (ssl is not None or trace_configs):
            raise ValueError(
                "ssl and trace_configs belong to your own session when you pass one: set "
                "them on its connector and in ClientSession(trace_configs=...)"
            )
        if fleet is not None and not isinstance(fleet, Coordinator):
            raise TypeError(f"fleet must be an aio88.fleet.Fleet, not {type(fleet).__name__}")
        resolved_url = _resolve_base_url(base_url)
        self._fleet = fleet
        self._transport = Transport(
            api_key=key.strip(),
            base_url=resolved_url,
            timeouts=timeouts,
            retry=retry,
            rate_limit=rate_limit,
            max_connections=max_connections,
            headers=headers,
            proxy=proxy,
            ssl=ssl,
            trace_configs=trace_configs,
            session=session,
            rate_budget=None
            if fleet is None
            else fleet.rate_budget(budget_name(key, resolved_url), rate_limit, time.monotonic),
        )
        self._downloader = Downloader(self._transport, download_concurrency)
        self.generations = Generations(self._transport)
        self.videos = Videos(self._transport, self._downloader)
        self.webhooks = Webhooks(key.strip())

    @property
    def base_url(self) -> str:
        """The API origin requests go to."""
        return self._transport.base_url

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._transport.state == "closed"

    def __repr__(self) -> str:
        return f"<aio88.Client base_url={self.base_url!r} state={self._transport.state}>"

    async def __aenter__(self) -> Client:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def open(self) -> None:
        """Create the HTTP session. ``async with`` does this for you; needs a running loop.

        Raises:
            RuntimeError: The client is already open, or was closed.
        """
        if self._transport.state == "open":
            raise RuntimeError("this aio88.Client is already open; enter it only once")
        self._transport.open()

    async def aclose(self) -> None:
        """Close the HTTP session (unless it was passed in). Calling it again does nothing."""
        await self._transport.aclose()

    async def download(
        self,
        task_or_url: Source,
        dest: str | os.PathLike[str],
        *,
        resume: bool = True,
        overwrite: bool = False,
        sha256: str | None = None,
        on_progress: Progress | None = None,
        fsync: bool = False,
    ) -> Path:
        """Save a finished video to ``dest``, safely::

            path = await client.download(task, "videos/fox.mp4")

        The bytes stream to ``<dest>.part`` and are renamed to ``dest`` only when
        complete and verified, so nothing truncated is ever at ``dest``. An interrupted
        download (dropped connection, crash, cancellation) resumes from its ``.part``
        with ``Range``; a server that ignores ranges is restarted cleanly.

        An existing ``dest`` counts as finished (aio88 only ever creates it whole), so a
        re-run fetches nothing: pass ``sha256`` to prove it, or ``overwrite=True`` to
        fetch again.

        Args:
            task_or_url: A task (its ``url``, falling back to the API's content endpoint
                when that link has expired), a video id, or an absolute URL. The API key
                goes only to the API's own origin.
            dest: The file to write; its missing folders are created.
            resume: Continue an existing ``.part`` (else start over).
            overwrite: Fetch again even if ``dest`` exists.
            sha256: The expected hex SHA-256; a mismatch discards the file.
            on_progress: Called with ``(bytes_done, bytes_total or None)`` as each block
                reaches the disk.
            fsync: Flush the file and its folder to disk before returning.

        Returns:
            ``dest`` as a :class:`~pathlib.Path`.

        Raises:
            DownloadError: A message where a video was expected (the task is not finished,
                or the link expired), a size or checksum mismatch, or a disk problem (a
                folder of ``dest`` that cannot be created, a full disk).
        """
        return await self._downloader.download(
            task_or_url,
            dest,
            resume=resume,
            overwrite=overwrite,
            sha256=sha256,
            on_progress=on_progress,
            fsync=fsync,
        )

    def poller(
        self,
        *,
        concurrency: int = DEFAULT_POLL_CONCURRENCY,
        schedule: Schedule | None = None,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_update: Callable[[Task], object] | None = None,
        clock: Clock | None = None,
    ) -> Poller:
        """A long-lived :class:`Poller` for web backends; run it with ``async with``::

            async with client.poller(concurrency=64) as poller:
                task = await poller.wait("task_abc", kind="video")

        Many concurrent ``wait()`` calls for one id share one poll stream.

        Args:
            concurrency: The most poll requests in flight at once.
            schedule: When to poll; the docs' tiers, progress-aware, by default.
            timeout: The default deadline of each ``wait()``; ``None`` waits forever.
            on_update: Called with a task whenever its status or progress changes.
            clock: The time source; tests pass ``aio88.testing.ManualClock``.
        """
        return self._make_poller(concurrency, schedule, timeout, on_update, clock)

    def _make_poller(
        self,
        concurrency: int,
        schedule: Schedule | None,
        timeout: float | None,
        on_update: Callable[[Task], object] | None,
        clock: Clock | None,
        *,
        on_outcome: Callable[[Outcome], object] | None = None,
        on_fatal: Callable[[BaseException], object] | None = None,
    ) -> Poller:
        return Poller(
            self._transport,
            concurrency=concurrency,
            schedule=schedule,
            timeout=timeout,
            on_update=on_update,
            clock=clock,
            on_outcome=on_outcome,
            on_fatal=on_fatal,
            webhooks=self.webhooks,  # for poller.webhook_handler(): the key stays in it
            leases=None if self._fleet is None else self._fleet.leases,
        )

    def watch(
        self,
        ids: Iterable[str | Task],
        *,
        kind: Kind = "video",
        schedule: Schedule | None = None,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        batch_timeout: float | None = None,
        concurrency: int = DEFAULT_POLL_CONCURRENCY,
        download_dir: str | os.PathLike[str] | None = None,
        download_workers: int = DEFAULT_DOWNLOAD_WORKERS,
        on_update: Callable[[Task], object] | None = None,
        clock: Clock | None = None,
    ) -> AbstractAsyncContextManager[Watch]:
        """Poll many tasks at once and yield each one's :class:`Outcome` as it finishes::

            async with client.watch(ids, kind="video", concurrency=64) as outcomes:
                async for outcome in outcomes:   # completion order, each id once
                    print(outcome.id, outcome.ok, outcome.error)

        One task's failure, timeout or bad id is an ``Outcome`` with ``.error``, never an
        exception that ends the batch; only a refused key (401, 403) ends it, raised from
        the iteration. Leaving the block early cancels everything cleanly.

        Args:
            ids: Task ids, or tasks (a task's type gives its kind).
            kind: The kind of plain string ids: ``"generation"`` or ``"video"``.
            schedule: When to poll; the docs' tiers, progress-aware, by default.
            timeout: Each task's deadline in seconds from now; ``None``: no deadline;
                ``0``: each task is polled once.
            batch_timeout: A deadline for the whole batch; what is left then times out
                (a task added after it is polled once).
            concurrency: The most poll requests in flight at once.
            download_dir: Save each succeeded video to ``<download_dir>/<id>.<format or
                mp4>`` (soonest-expiring first) before yielding its outcome, with the path
                on ``outcome.path``; a failed download is that outcome's ``error``.
            download_workers: How many of this watch's downloads run at once (within the
                client's ``download_concurrency``).
            on_update: Called with a task whenever its status or progress changes.
            clock: The time source; tests pass ``aio88.testing.ManualClock``.

        Raises:
            ValueError: ``timeout`` or ``batch_timeout`` is negative.
            DownloadError: ``download_dir`` cannot be created.
        """
        check_timeout(timeout)
        check_timeout(batch_timeout, "batch_timeout")
        directory = None
        if download_dir is not None:
            directory = Path(download_dir)
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DownloadError(
                    f"cannot use {directory} as download_dir: {exc.strerror or exc}", path=directory
                ) from exc
        return open_watch(
            functools.partial(self._make_poller, concurrency, schedule, timeout, on_update, clock),
            ids,
            kind=kind,
            timeout=timeout,
            batch_timeout=batch_timeout,
            download_dir=directory,
            download=self._downloader.download,
            download_workers=download_workers,
        )

    def __del__(self) -> None:
        # A client dropped while open must not leak sockets: close them synchronously and
        # say so once, in aio88's words rather than aiohttp's.
        transport = getattr(self, "_transport", None)
        if transport is not None and transport.state == "open" and transport.session is not None:
            if transport.owns_session and not transport.session.closed:
                warnings.warn(
                    "an aio88.Client was never closed; use `async with Client() as client:` "
                    "or `await client.aclose()`",
                    ResourceWarning,
                    source=self,
                    stacklevel=2,
                )
            transport.abandon()
