"""Shared fixtures. The emulator and client fixtures come from aio88's own pytest plugin."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from postgres import PostgresServer, PostgresUnavailable, find_bindir
from servers import (
    Nginx,
    RawServerPool,
    StaticHttpServer,
    TestCA,
    TinyProxy,
    free_port,
    make_test_ca,
)

#: What a raw server answers to a request (its raw bytes): the reply, or None to close.
Answer = Callable[[bytes], bytes | None]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """aiohttp is asyncio-only."""
    return "asyncio"


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (free once the probe socket is closed)."""
    return free_port()


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read a developer's real key or base URL."""
    monkeypatch.delenv("AIO88_API_KEY", raising=False)
    monkeypatch.delenv("AIO88_BASE_URL", raising=False)
    monkeypatch.delenv("AIO88_FLEET_URL", raising=False)


#: Run a test once per dialect: ``@BOTH_DIALECTS`` on a test using ``aio88_emulator``.
BOTH_DIALECTS = pytest.mark.parametrize(
    "aio88_emulator",
    [{"dialect": "docs"}, {"dialect": "newapi"}],
    indirect=True,
    ids=["docs", "newapi"],
)


class RawServers:
    """Loopback servers whose every request gets ``answer(request)``: the reply's bytes,
    or None to close at once. A reply saying ``Connection: close`` closes after it; one
    containing ``HANG`` stays silent until the client goes away or the server closes."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[object]] = set()

    async def start(self, answer: Answer) -> int:
        """Start a server; return its port."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                while True:
                    reply = answer(await reader.readuntil(b"\r\n\r\n"))
                    if reply is None:
                        break
                    writer.write(reply)
                    await writer.drain()
                    if b"HANG" in reply:
                        while await reader.read(65536):  # silent until the client leaves
                            pass
                    if b"Connection: close" in reply or b"HANG" in reply:
                        break
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            except asyncio.CancelledError:
                pass  # the server is closing
            finally:
                self._connections.discard(task)
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop every server and end the connections still open."""
        for server in self.servers:
            server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=5)
        for server in self.servers:
            await server.wait_closed()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Answer], asyncio.Future[int]]]:
    """Start a plain-HTTP raw server (see :class:`RawServers`); returns its port."""
    servers = RawServers()
    yield servers.start  # type: ignore[misc]
    await servers.close()


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_server(
    tls_cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[Answer], asyncio.Future[int]]]:
    """Start a raw server over TLS for 127.0.0.1, which the client trusts through
    ``SSL_CERT_FILE`` (as a real deployment would); returns its port."""
    cert, key = tls_cert
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what the default context trusts
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    servers = RawServers(server_context)
    yield servers.start  # type: ignore[misc]
    await servers.close()


#: Every spelling of the proxy variables that urllib (and so aio88) reads.
PROXY_VARIABLES = [
    spelling
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for spelling in (name, name.upper())
]


@pytest.fixture(autouse=True)
def _no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never go through a developer's proxy: the client honours these variables."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def raw_servers() -> AsyncIterator[RawServerPool]:
    """Start flexible raw servers (``await raw_servers.start(answer)``, see
    :class:`servers.RawServer`); closed after the test, which fails if a script raised."""
    pool = RawServerPool()
    yield pool
    errors = await pool.close()
    assert not errors, f"a raw server's script raised: {errors!r}"


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        pytest.skip(f"needs {name} (.ci/run installs it)")
    return found


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx on loopback with ``keepalive_timeout 1s`` and ``keepalive_requests 3``
    (see :class:`servers.Nginx`), for the whole session."""
    _program("nginx")
    with Nginx(tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="session")
def static_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticHttpServer]:
    """``python -m http.server`` (HTTP/1.0) on loopback, for the whole session."""
    with StaticHttpServer(tmp_path_factory.mktemp("http-server")) as server:
        yield server


@pytest.fixture(scope="session")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    """A real forward proxy (tinyproxy) on loopback, for the whole session."""
    _program("tinyproxy")
    with TinyProxy(tmp_path_factory.mktemp("tinyproxy")) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A test CA and a server certificate for 127.0.0.1 signed by it."""
    return make_test_ca(tmp_path_factory.mktemp("ca"), _program("openssl"))


@pytest.fixture(scope="session")
def tinyproxy_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    """tinyproxy that wants ``BasicAuth user pass`` (a 407 without it), for the session."""
    _program("tinyproxy")
    root = tmp_path_factory.mktemp("tinyproxy-auth")
    with TinyProxy(root, basic_auth=("user", "pass")) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on loopback for the whole session (see
    :class:`postgres.PostgresServer`); the test skips when no server programs can be had.

    Its start-up (seconds; minutes if it installs the package first) is not counted in
    any test's timeout: pyproject's ``timeout_func_only`` times the test function only."""
    pytest.importorskip("asyncpg", reason="needs asyncpg (the aio88[postgres] extra)")
    try:
        bindir = find_bindir()
    except PostgresUnavailable as missing:
        pytest.skip(str(missing))
    with PostgresServer(bindir) as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database (``t_<n>``) in :func:`postgres_server`, as the
    superuser without a password; dropped after the test. (A plain fixture: sync and
    async tests may use it.)"""
    name = postgres_server.new_database_name()
    postgres_server.sql(f'CREATE DATABASE "{name}"')
    yield postgres_server.dsn(name)
    # FORCE: a test that failed may have left connections open
    postgres_server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
