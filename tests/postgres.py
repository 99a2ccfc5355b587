"""A throwaway PostgreSQL cluster on loopback for the fleet's tests (``aio88.fleet``).

:class:`PostgresServer` runs the server programs of the machine's PostgreSQL (Debian's
``/usr/lib/postgresql/<version>/bin``, or ``initdb`` on the ``PATH``): ``initdb`` into a
fresh folder, ``pg_ctl start`` on a free port of 127.0.0.1 with ``trust`` authentication
and ``fsync=off`` (never for real data), ``pg_ctl stop -m immediate`` and removal at the
end. ``initdb`` refuses to run as root, so as root both run as the ``postgres`` user (which
Debian's package creates) in a folder it owns.

Without the programs, :func:`find_bindir` may install Debian's ``postgresql`` with apt-get
when the machine lets us (root with apt-get), so that the README's test command passes on
a fresh machine of the kind CI uses; otherwise the fleet tests skip, naming what is
missing. The fixtures (``postgres_server``, ``postgres_dsn``) live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

from servers import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "database_outage", "find_bindir"]

#: How long ``pg_ctl`` may take to start or stop the cluster (its own ``-t``).
START_TIMEOUT = 60
#: How long installing the package may take on a slow mirror.
INSTALL_TIMEOUT = 600
#: The superuser ``initdb -U`` creates; the DSNs log in as it (trust, no password).
SUPERUSER = "postgres"
#: The system user the server runs as when we are root (``initdb`` refuses root).
SYSTEM_USER = "postgres"


class PostgresUnavailable(Exception):
    """No PostgreSQL server programs here and no way to install them: the reason."""


def _bindirs() -> list[Path]:
    """Folders holding ``initdb`` and ``pg_ctl``, the newest version first."""
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    found = sorted(versions, key=lambda p: _version(p.parent.name), reverse=True)
    initdb = shutil.which("initdb")
    if initdb is not None:
        found.append(Path(initdb).resolve().parent)
    programs = ("initdb", "pg_ctl", "psql")
    return [f for f in found if all((f / program).is_file() for program in programs)]


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _install() -> None:
    """Install Debian's ``postgresql`` (the server programs), as ``.ci/run`` does."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt_get = shutil.which("apt-get") or "apt-get"
    command = [apt_get, "install", "-y", "-qq", "postgresql"]
    done = subprocess.run(command, env=env, capture_output=True, timeout=INSTALL_TIMEOUT)
    if done.returncode != 0:  # the package lists may be missing or stale: fetch them once
        subprocess.run(
            [apt_get, "update", "-qq"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT
        )
        subprocess.run(command, env=env, capture_output=True, timeout=INSTALL_TIMEOUT)


def find_bindir(*, install: bool = True) -> Path:
    """The folder of ``initdb`` and ``pg_ctl``; installs them first when missing and this
    machine lets us (root with apt-get). Raises :class:`PostgresUnavailable` otherwise."""
    folders = _bindirs()
    if not folders and install and os.geteuid() == 0 and shutil.which("apt-get"):
        _install()
        folders = _bindirs()
    if not folders:
        raise PostgresUnavailable(
            "needs PostgreSQL's programs (initdb, pg_ctl and psql, e.g. Debian's "
            "postgresql package, which .ci/run installs)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"runs as root, but there is no {SYSTEM_USER!r} user to run initdb as"
            ) from None
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("runs as root, but has no runuser to run initdb as")
    return folders[0]


class PostgresServer:
    """One PostgreSQL cluster on ``127.0.0.1:port`` for the session; use as a context
    manager. :meth:`dsn` names a database in it; :meth:`new_database_name` hands out
    fresh names."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="aio88-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._names = itertools.count(1)
        self._started = False

    def dsn(self, database: str = "postgres") -> str:
        """The DSN of ``database`` as the superuser (no password: trust on loopback)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database_name(self) -> str:
        """A database name not handed out before in this session (``t_<n>``)."""
        return f"t_{next(self._names)}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run ``statement`` with ``psql`` as the superuser (no driver, no event loop:
        usable from any fixture); returns what it printed."""
        done = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
             self.dsn(database), "-c", statement],
            capture_output=True, text=True, timeout=START_TIMEOUT, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {statement}: {done.stderr}")
        return done.stdout

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = [shutil.which("runuser") or "runuser", "-u", SYSTEM_USER, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=START_TIMEOUT + 10, check=False
        )

    def _check(self, done: subprocess.CompletedProcess[str], what: str) -> None:
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"PostgreSQL's {what} failed ({done.returncode}):\n{done.stdout}\n"
                f"{done.stderr}\n{log}"
            )

    def __enter__(self) -> PostgresServer:
        try:
            self._start()
        except BaseException:
            self._remove()
            raise
        return self

    def _start(self) -> None:
        if os.geteuid() == 0:  # the server's user must own its folders
            user = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._check(
            self._run(
                "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"
            ),
            "initdb",
        )
        for attempt in range(3):  # another program may take the free port meanwhile
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                "-c max_connections=200 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off"
            )
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                "-t", str(START_TIMEOUT), "-w", "start",
            )  # fmt: skip
            if done.returncode == 0:
                self._started = True
                return
            if attempt == 2:
                self._check(done, "pg_ctl start")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the cluster at once (nothing in it is worth a clean shutdown) and remove
        its folder."""
        if self._started:
            self._started = False
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)


@contextlib.asynccontextmanager
async def database_outage(dsn: str) -> AsyncIterator[None]:
    """While the block runs, the database of ``dsn`` refuses every connection, and every
    one it had is cut (waited for until gone): a real outage for its clients, as when
    PostgreSQL is stopped."""
    import asyncpg  # only the fleet's tests call this, and they have it

    base, name = dsn.rsplit("/", 1)
    admin = await asyncpg.connect(f"{base}/postgres")  # not from the database it closes
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
            # The cut sessions end soon after.
            count = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            while await admin.fetchval(count, name):  # noqa: ASYNC110 - the server's view, no event
                await asyncio.sleep(0.01)
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
