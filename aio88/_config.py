"""Configuration objects and their defaults.

Everything here is a frozen value; derive a variant with :func:`dataclasses.replace`::

    from dataclasses import replace
    from aio88 import DEFAULT_RETRY
    patient = replace(DEFAULT_RETRY, attempts=8)

This module is a leaf: it imports nothing from aio88.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CONGESTION_RECOVERY",
    "CREATE_KEEPALIVE",
    "CREATE_RESENDS",
    "DEFAULT_BASE_URL",
    "DEFAULT_DOWNLOAD_CONCURRENCY",
    "DEFAULT_DOWNLOAD_WORKERS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_POLL_CONCURRENCY",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "DEFAULT_WAIT_TIMEOUT",
    "CALLBACK_BODY_LIMIT",
    "CALLBACK_MEMORY",
    "CALLBACK_MEMORY_MAX",
    "DEFAULT_LEASE",
    "DNS_CACHE_TTL",
    "LEASE_CHECKS",
    "DOWNLOAD_BLOCK_SIZE",
    "DOWNLOAD_LOCK_POLL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_DASHBOARD_TOKEN",
    "ENV_FLEET_URL",
    "ENV_USER_ID",
    "ERROR_BODY_LIMIT",
    "FLEET_POOL_SIZE",
    "FLEET_RETENTION",
    "FLEET_PROCESS_EXPIRY",
    "FLEET_PRUNE_BEATS",
    "FLEET_CONNECT_TIMEOUT",
    "FLEET_CLOSE_TIMEOUT",
    "FLEET_RECONNECT_MIN",
    "FLEET_RECONNECT_MAX",
    "FLEET_LISTEN_CHECK",
    "FLEET_RATE_BLOCK",
    "FLEET_RATE_HOLD",
    "FLEET_PAUSE_REFRESH",
    "FLEET_SUCCESS_FLUSH",
    "FLEET_LEASE_MARGIN",
    "FLEET_BATCH",
    "FLEET_HINT_BACKLOG",
    "FLEET_LATE_HINTS",
    "FLEET_OUTAGE_LOG_EVERY",
    "FLEET_BATCH_TEND",
    "FLEET_BATCH_DEAD_LEASES",
    "FLEET_BATCH_PATIENCE",
    "FLEET_STATEMENT_TIMEOUT",
    "INTERRUPT_GRACE",
    "MAX_REDIRECTS",
    "MESSAGE_EXCERPT_LIMIT",
    "POLL_CONCURRENCY_FLOOR",
    "POLL_FAIRNESS_STREAK",
    "RATE_FLOOR",
    "RECONCILE_CLOCK_SKEW",
    "RECONCILE_MAX_PAGES",
    "RECONCILE_PAGE_SIZE",
    "RECONCILE_SETTLE",
    "POOL_KEEPALIVE",
    "SETUP_PROBES",
    "RetryPolicy",
    "Timeouts",
    "check_timeout",
]

#: The environment variable the API key is read from when ``api_key`` is not given.
ENV_API_KEY = "AIO88_API_KEY"
#: The environment variable the API origin is read from when ``base_url`` is not given.
ENV_BASE_URL = "AIO88_BASE_URL"
#: Where the API lives unless told otherwise.
DEFAULT_BASE_URL = "https://88api.ai"
#: Most connections the client keeps open at once (aiohttp's connector limit).
DEFAULT_MAX_CONNECTIONS = 100
#: How long an idle pooled connection is kept for reuse (aiohttp's default).
POOL_KEEPALIVE = 15.0
#: After 429s, seconds for a poller's concurrency (or a client's rate) to grow back from its
#: floor to what it was configured for with time alone (successes make it sooner).
CONGESTION_RECOVERY = 5.0
#: The least share of its concurrency a poller keeps after 429s: a batch keeps moving.
POLL_CONCURRENCY_FLOOR = 1 / 4
#: The least share of ``rate_limit`` a client keeps after 429s.
RATE_FLOOR = 1 / 16
#: A create reuses a pooled connection only if it was used this many seconds ago at most:
#: servers close idle connections after a few seconds (nginx: 75 s, many balancers: 5 s),
#: and a POST sent on a connection being closed fails although the server never saw it.
CREATE_KEEPALIVE = 1.0
#: How many more times ``aio88 run`` sends a create the server provably did not take (a
#: 429 after the transport's own retries, a 5xx that new-api refunds), in the same run.
CREATE_RESENDS = 2
#: Before any create of a run has succeeded, how many jobs in a row may fail (sent) before
#: the run stops: then the set-up is wrong (a gateway that fails every create), not the jobs.
SETUP_PROBES = 3
#: After a first Ctrl-C, how long ``aio88 run`` waits for creates already sent to answer.
INTERRUPT_GRACE = 5.0
#: The dashboard access token ``aio88 run --reconcile`` reads its task list with (not an
#: ``sk-`` key: the dashboard's own, from its personal settings).
ENV_DASHBOARD_TOKEN = "AIO88_DASHBOARD_TOKEN"  # noqa: S105 - a variable name, no secret
#: The dashboard user id sent with it as ``New-Api-User``.
ENV_USER_ID = "AIO88_USER_ID"
#: Seconds after a create's deadline (its last send plus ``api_deadline``) during which
#: its task may still be missing from the dashboard's list (new-api stores a task once its
#: vendor has taken it): until then a job with no task found stays ``unconfirmed`` rather
#: than be created again, and a task stored until then can be its own.
RECONCILE_SETTLE = 120.0
#: Seconds by which the client's and the server's clocks may disagree once the server's is
#: measured (from the ``Date`` header): the widening of each job's windows. A server
#: whose clock is off by more, or unmeasured, never sends a job back to ``pending``.
RECONCILE_CLOCK_SKEW = 60.0
#: Tasks asked for per page of the dashboard's task list (new-api serves 100 at most).
RECONCILE_PAGE_SIZE = 100
#: Pages read at most (a bound on a list that keeps growing while it is read).
RECONCILE_MAX_PAGES = 200
#: How much of an error body is read: enough for any JSON error, never a whole video.
ERROR_BODY_LIMIT = 64 * 1024
#: How many redirects a request follows.
MAX_REDIRECTS = 10
#: How much of a message body (JSON or text where a video was expected) an error quotes.
MESSAGE_EXCERPT_LIMIT = 2000
#: How long a host name's addresses are kept (aiohttp's DNS cache), in seconds.
DNS_CACHE_TTL = 300
#: How long ``wait()`` waits for a task unless told otherwise: 30 minutes.
DEFAULT_WAIT_TIMEOUT = 30 * 60.0
#: Most poll requests a poller (or a watch) has in flight unless told otherwise.
DEFAULT_POLL_CONCURRENCY = 64
#: Polls a poller's worker makes in a row before it yields to the event loop regardless
#: (a fetch that never waits must not hold the loop).
POLL_FAIRNESS_STREAK = 32
#: How long a poller remembers a callback for a task nobody waits on yet, in seconds: a
#: ``wait()`` or ``add()`` of it within this polls at once. The server retries a callback
#: for about 21 minutes, so an event may well come before the caller's ``wait()``.
CALLBACK_MEMORY = 30 * 60.0
#: Most such callbacks remembered at once (the oldest are forgotten first): a flood of
#: signed events for unknown tasks must not grow memory without bound.
CALLBACK_MEMORY_MAX = 100_000
#: The largest callback body ``poller.webhook_handler()`` reads (a real event is < 1 KiB).
CALLBACK_BODY_LIMIT = 64 * 1024
#: How long a fleet's lease on a task lasts unless renewed (seconds): how soon a dead
#: process's tasks are polled by another.
DEFAULT_LEASE = 30.0
#: How often, per lease, a process retries a task another process polls: so that a dead
#: holder's task is taken over within ``lease * (1 + 1/LEASE_CHECKS)``.
LEASE_CHECKS = 3
#: The environment variable ``aio88.fleet.Fleet`` reads its database URL from.
ENV_FLEET_URL = "AIO88_FLEET_URL"
#: Connections a fleet's pool keeps per process (one more LISTENs).
FLEET_POOL_SIZE = 2
#: How long a fleet keeps a finished task's row, for waiters that come later (seconds).
FLEET_RETENTION = 24 * 3600.0
#: A process row silent for this many of its leases is deleted (the process is gone).
FLEET_PROCESS_EXPIRY = 10
#: A fleet prunes old rows every this many heartbeats (three per lease), not every one.
FLEET_PRUNE_BEATS = 10
#: How long connecting to the fleet's database may take before it counts as unreachable.
FLEET_CONNECT_TIMEOUT = 10.0
#: How long a fleet's clean exit (releasing its leases, deleting its row) may take.
FLEET_CLOSE_TIMEOUT = 5.0
#: The LISTEN connection's reconnect backoff, first and longest (seconds).
FLEET_RECONNECT_MIN = 0.1
FLEET_RECONNECT_MAX = 5.0
#: How often the LISTEN connection is checked with a query while no notification comes.
FLEET_LISTEN_CHECK = 5.0
#: A fleet-wide rate budget hands out tokens in blocks of at most this share of the rate
#: (only as many as there are waiters): one round trip per block, not per request.
FLEET_RATE_BLOCK = 0.05
#: A block's tokens unused this long after their time are dropped. The fleet's bucket
#: holds ``rate * (1 - FLEET_RATE_HOLD)``, so that tokens used up to this late still keep
#: any window of T seconds within ``rate * T + rate``.
FLEET_RATE_HOLD = 0.1
#: With ``rate_limit=None``, how often a budget in use re-reads the shared 429 pause (for
#: a notification that was lost with a connection).
FLEET_PAUSE_REFRESH = 1.0
#: How often a recovering budget sends its successes to the database (seconds).
FLEET_SUCCESS_FLUSH = 0.25
#: The share of a lease a process no longer counts on: it stops believing it holds a lease
#: at the time it *sent* the claim or renewal plus ``lease * (1 - FLEET_LEASE_MARGIN)``,
#: before the database (which counts from when it ran the statement) lets another take it.
FLEET_LEASE_MARGIN = 0.1
#: Most task ids in one lease statement (claim, renew, release, read): 10,000 ``track()``
#: calls are two statements.
FLEET_BATCH = 5000
#: Seconds between a fleet batch worker's looks at the shared ledger (``aio88 run --ledger``):
#: taking over a dead worker's tasks, marking its creates unconfirmed, seeing the batch end.
FLEET_BATCH_TEND = 0.5
#: A batch worker counts as dead once its heartbeat is older than this many of its leases
#: (not one: a late heartbeat, a stalled loop or a slow database must not look like death).
FLEET_BATCH_DEAD_LEASES = 2
#: How long a batch worker waits for its database to come back (a restart, a fail-over, the
#: network) before it stops (seconds). Meanwhile its polls go on; what it has to record
#: waits, and is recorded once the database answers again.
FLEET_BATCH_PATIENCE = 300.0
#: The longest a batch worker waits for one statement's answer before it counts as failed
#: (and is tried again, see FLEET_BATCH_PATIENCE): a network that drops packets must not
#: hold a statement for the kernel's TCP timeout (about 15 minutes).
FLEET_STATEMENT_TIMEOUT = 15.0
#: Most downloads streaming at once across one client unless told otherwise.
DEFAULT_DOWNLOAD_CONCURRENCY = 8
#: Most downloads one ``watch(download_dir=...)`` runs at once unless told otherwise
#: (within the client's ``download_concurrency``).
DEFAULT_DOWNLOAD_WORKERS = 4
#: The size of a download's blocks: the unit handed to the writer thread, and of memory
#: use (aiohttp may hold two, the writer two more). Fastest here among 256 KiB-4 MiB
#: (``docs/benchmarks.md``).
DOWNLOAD_BLOCK_SIZE = 1024 * 1024
#: How often a download waiting for another's lock on the same file looks again (seconds).
DOWNLOAD_LOCK_POLL = 0.2


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long one HTTP request may take, in seconds; ``None`` means no limit.

    ========  =================================================================
    field     bounds
    ========  =================================================================
    connect   establishing a connection (TCP, proxy and TLS; not the wait for a
              free slot among ``max_connections``)
    read      the gap between two reads of a stream or download (a silent
              server, a stalled body); an API call's answer is one small JSON
              body, so it must come whole within ``connect + read``
    total     a whole API call, retries not included (not streams or downloads,
              which only have ``connect`` and ``read``, so that big files are
              never cut off)
    ========  =================================================================

    These bound single requests. How long to *wait for a task* is ``wait(timeout=...)``.
    """

    connect: float | None = 10.0
    read: float | None = 60.0
    total: float | None = 120.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how a failed request is tried again.

    Reads (GET, HEAD) are retried on 408, 409, 429, 5xx, timeouts and broken connections.
    A create is retried only when the server provably did not process it (a connection
    that failed before the request was sent, or a 429), because 88API has no idempotency
    keys and a duplicate create is billed twice.

    Attributes:
        attempts: Total tries per request, the first included (1 disables retries).
        backoff_initial: The first backoff ceiling in seconds; it doubles each attempt.
        backoff_max: The largest backoff ceiling. The actual sleep is a uniformly random
            fraction of the ceiling ("full jitter"), so that many clients spread out.
        retry_after_max: The longest ``Retry-After`` the client will honour. A server that
            asks for longer gets its error raised instead of a long silent sleep.
        retry_unsafe_creates: Also retry a create after a timeout, a broken connection or a
            5xx. The server may have accepted the first try, so this can create (and bill)
            the task twice. Off by default.
    """

    attempts: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 120.0
    retry_unsafe_creates: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.retry_after_max < 0:
            raise ValueError("RetryPolicy delays must not be negative")


#: The timeouts a client uses unless given others.
DEFAULT_TIMEOUTS = Timeouts()
#: The retry policy a client uses unless given another.
DEFAULT_RETRY = RetryPolicy()


def check_timeout(value: float | None, name: str = "timeout") -> float | None:
    """``value`` if it is a usable deadline: seconds, 0 or more, or ``None`` for none.

    Raises:
        TypeError: It is not a number.
        ValueError: It is negative (or NaN): a deadline already past is a mistake, not
            "look once", which is what ``0`` means.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if not value >= 0:  # also refuses NaN, which compares false with everything
        raise ValueError(
            f"{name} must be 0 or more seconds (0 polls once), or None to wait without a "
            f"deadline; got {value!r}"
        )
    return value


#: How many callback hints that could not be sent (the fleet's database was down) are kept
#: to send when it is back: the newest, each task id once.
FLEET_HINT_BACKLOG = 10_000
#: Seconds between the log lines that say a database outage goes on (the first failure is
#: logged at once, and the recovery).
FLEET_OUTAGE_LOG_EVERY = 30.0
#: Seconds after an outage during which the hints kept through it are sent again on each
#: heartbeat and reconnect: longer than the others' LISTEN reconnect backoff (at most
#: FLEET_RECONNECT_MAX), so each of them is listening for one of the sends.
FLEET_LATE_HINTS = 3 * FLEET_RECONNECT_MAX
