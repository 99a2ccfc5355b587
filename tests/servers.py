"""Real servers on loopback for the HTTP compatibility suite (``test_compat.py``).

- :class:`RawServer`: an asyncio server that answers with arbitrary bytes (1xx heads,
  HTTP/1.0, LF-only lines, gzip, silence, answers before the request) and records every
  request exactly as it arrived, body included.
- :class:`Nginx`, :class:`StaticHttpServer` (``python -m http.server``) and
  :class:`TinyProxy`: real programs in a subprocess on a free loopback port, each in its
  own directory, with a log the tests read.
- :func:`make_test_ca`: a CA and a server certificate signed by it, made by ``openssl``.

Nothing here contacts any host but 127.0.0.1. The fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit

__all__ = [
    "Answer",
    "Handler",
    "Nginx",
    "NginxLogEntry",
    "RawConnection",
    "RawRequest",
    "RawServer",
    "RawServerPool",
    "StaticHttpServer",
    "TestCA",
    "TinyProxy",
    "closes_after",
    "free_port",
    "http_reply",
    "make_test_ca",
    "serve_answers",
    "task_id_of",
    "task_json",
    "wants_close",
]

#: How long a process gets to start listening, or to exit when asked.
PROCESS_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (free once the probe closes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- wire shapes -------------------------------------------------------------------------


def task_json(task_id: str, status: str = "completed", **extra: object) -> bytes:
    """A ``/v1/videos`` task as the API sends it (what a poll or a create answers)."""
    body: dict[str, object] = {
        "id": task_id,
        "object": "video",
        "model": "sora-2",
        "status": status,
        "progress": 100 if status == "completed" else 0,
        "created_at": 1,
        **extra,
    }
    return json.dumps(body).encode()


def http_reply(
    body: bytes = b"",
    *,
    status: int = 200,
    reason: str = "OK",
    version: str = "HTTP/1.1",
    headers: Sequence[tuple[str, str]] = (("Content-Type", "application/json"),),
    content_length: bool = True,
    eol: bytes = b"\r\n",
) -> bytes:
    """A whole response: status line, ``headers`` (plus ``Content-Length`` unless told
    not to), a blank line and ``body``, with ``eol`` ending each line."""
    lines = [f"{version} {status} {reason}".encode()]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if content_length:
        lines.append(b"Content-Length: %d" % len(body))
    return eol.join(lines) + eol + eol + body


_HEAD_END = re.compile(rb"\r\n\r\n|\n\n")
_LINE_END = re.compile(rb"\r?\n")


def closes_after(reply: bytes) -> bool:
    """Whether a server must close the connection after sending ``reply``, as its final
    head says (1xx heads before it are skipped): ``Connection: close`` among its tokens,
    HTTP/1.0 without ``keep-alive``, or a body that only the close can end."""
    pos = 0
    while True:
        match = _HEAD_END.search(reply, pos)
        if match is None:
            return True  # no complete head: nothing the client could reuse
        lines = _LINE_END.split(reply[pos : match.start()])
        version, _, rest = lines[0].partition(b" ")
        try:
            status = int(rest[:3])
        except ValueError:
            return True
        if 100 <= status < 200:
            pos = match.end()
            continue
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip().lower())
        tokens = {
            token.strip() for value in headers.get(b"connection", []) for token in value.split(b",")
        }
        if b"close" in tokens:
            return True
        if version.upper() == b"HTTP/1.0" and b"keep-alive" not in tokens:
            return True
        chunked = any(b"chunked" in value for value in headers.get(b"transfer-encoding", []))
        return not (chunked or b"content-length" in headers or status in (204, 304))


# -- the raw server ----------------------------------------------------------------------


@dataclass
class RawRequest:
    """One request exactly as a :class:`RawServer` received it."""

    head: bytes
    """The request line and headers, up to and including the blank line."""
    body: bytes
    """The body (read by its ``Content-Length``, or de-chunked)."""
    connection: int
    """Which connection of the server it came on (1 for the first accepted)."""
    at: float = field(default_factory=time.monotonic)
    """When it was read (``time.monotonic()``)."""

    @property
    def line(self) -> str:
        """The request line, e.g. ``GET /v1/videos/task_1 HTTP/1.1``."""
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def method(self) -> str:
        return self.line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        """The request target as sent: a path, or an absolute URL to a proxy."""
        parts = self.line.split(" ")
        return parts[1] if len(parts) > 1 else ""

    @property
    def path(self) -> str:
        """The target's path, whether it was sent as a path or as an absolute URL."""
        target = self.target
        return urlsplit(target).path if "://" in target else target.split("?", 1)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header line, in order, as ``(name, value)`` (repeats kept)."""
        pairs = []
        for raw in self.head.split(b"\r\n")[1:]:
            if raw:
                name, _, value = raw.partition(b":")
                pairs.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return pairs

    def values(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


def task_id_of(request: RawRequest) -> str:
    """The task id a poll asks for: the last segment of ``/v1/videos/<id>``."""
    return request.path.rstrip("/").rsplit("/", 1)[-1]


class RawConnection:
    """One accepted connection, for a :data:`Handler` to script."""

    def __init__(
        self,
        server: RawServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        index: int,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.index = index

    async def read_request(self) -> RawRequest | None:
        """The next request (recorded on the server), or None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        request = RawRequest(head, b"", self.index)
        length = request.values("content-length")
        if length:
            request.body = await self.reader.readexactly(int(length[0]))
        elif any("chunked" in value.lower() for value in request.values("transfer-encoding")):
            request.body = await self._read_chunked()
        self.server.requests.append(request)
        return request

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return bytes(body)
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until it is handed to the kernel."""
        self.writer.write(data)
        await self.writer.drain()

    async def wait_for_close(self) -> None:
        """Stay silent until the client closes the connection."""
        while await self.reader.read(65536):
            pass


#: What a raw server answers to a request: the reply's bytes, or None to close at once.
#: The connection is closed after a reply whose final head says so (:func:`closes_after`).
Answer = Callable[[RawRequest], bytes | None]
#: A whole connection's script, for what an :data:`Answer` cannot say (silence, an answer
#: sent before the request is read).
Handler = Callable[[RawConnection], Awaitable[None]]


def wants_close(request: RawRequest) -> bool:
    """Whether the client asked to close the connection after this request
    (``Connection: close``; tinyproxy asks so of every request it forwards, and relays a
    kept-alive connection's later requests untouched, without its ``Via``)."""
    tokens = {
        token.strip().lower()
        for value in request.values("connection")
        for token in value.split(",")
    }
    return "close" in tokens


def serve_answers(answer: Answer) -> Handler:
    """The handler that answers each request on a connection with ``answer(request)``,
    and closes the connection after a reply that says so or a request that asked."""

    async def handle(conn: RawConnection) -> None:
        while (request := await conn.read_request()) is not None:
            reply = answer(request)
            if reply is None:
                return
            await conn.send(reply)
            if closes_after(reply) or wants_close(request):
                return

    return handle


#: Errors that only mean "the client went away": not the script's fault.
_GONE = (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.LimitOverrunError)


class RawServer:
    """A loopback server that runs ``handler`` for each connection and records every
    request (:attr:`requests`) and how many connections were open at once."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[RawRequest] = []
        self.connections = 0
        """Connections accepted so far."""
        self.open_connections = 0
        self.max_open_connections = 0
        """The most connections open at the same time."""
        self.errors: list[BaseException] = []
        """Exceptions the handler raised (a bug in the test's script)."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)
        try:
            await self.handler(RawConnection(self, reader, writer, self.connections))
        except _GONE:
            pass
        except asyncio.CancelledError:
            pass  # the server is closing
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self.open_connections -= 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop listening and end every connection still open."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)


class RawServerPool:
    """Starts raw servers for one test and closes them after it (the ``raw_servers``
    fixture)."""

    def __init__(self) -> None:
        self.servers: list[RawServer] = []

    async def start(
        self,
        answer: Answer | None = None,
        *,
        handler: Handler | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RawServer:
        """Start a server that answers each request with ``answer``, or runs ``handler``
        for each connection; over TLS with ``ssl_context``."""
        if handler is None:
            if answer is None:
                raise TypeError("pass an answer or a handler")
            handler = serve_answers(answer)
        elif answer is not None:
            raise TypeError("pass an answer or a handler, not both")
        server = RawServer(handler, ssl_context)
        self.servers.append(server)
        return await server.start()

    async def close(self) -> list[BaseException]:
        """Close every server; return what their handlers raised."""
        errors: list[BaseException] = []
        for server in self.servers:
            await server.close()
            errors += server.errors
        return errors


# -- processes ---------------------------------------------------------------------------


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} is not listening on {port} after {PROCESS_TIMEOUT}s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


ProcessT = TypeVar("ProcessT", bound="_Process")


class _Process:
    """A server program in a subprocess on a free loopback port, started on ``__enter__``
    (with another port if the first was taken meanwhile) and stopped on ``__exit__``."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = root / f"{self.name}.out"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write the configuration for :attr:`port`."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self: ProcessT) -> ProcessT:
        for attempt in range(3):
            self.port = free_port()
            self.prepare()
            with open(self.output, "wb") as out:
                self.proc = subprocess.Popen(
                    self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.root
                )
            try:
                _wait_listening(self.port, self.proc, self.name, self.output)
                return self
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


NGINX_CONF = r"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format compat '$connection $connection_requests $msec $request_method '
                      '$request_uri $status "$http_x_compat_test"';
    access_log {root}/access.log compat;
    default_type application/json;
    keepalive_timeout {keepalive_timeout};
    keepalive_requests {keepalive_requests};
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/videos {{ return 200 '{created}'; }}
        location ~ ^/v1/videos/([A-Za-z0-9_-]+)$ {{ return 200 '{polled}'; }}
    }}
}}
"""


#: What nginx answers to a create: a queued task named after its connection and request.
NGINX_CREATED = task_json("task_c${connection}_${connection_requests}", status="queued").decode()
#: What nginx answers to a poll of ``/v1/videos/<id>``: that task, completed.
NGINX_POLLED = task_json("$1").decode()


@dataclass(frozen=True)
class NginxLogEntry:
    """One line of the nginx fixture's access log."""

    connection: int
    """nginx's serial number of the connection (the same for requests that shared one)."""
    connection_requests: int
    """Which request this was on its connection (1 for the first)."""
    msec: float
    """When it was logged (Unix time, millisecond resolution)."""
    method: str
    uri: str
    status: int
    marker: str
    """The request's ``X-Compat-Test`` header, which tests set to find their own lines."""


_NGINX_LINE = re.compile(r'^(\d+) (\d+) ([\d.]+) (\S+) (\S+) (\d+) "(.*)"$')


class Nginx(_Process):
    """nginx (one worker, ``daemon off``) that closes idle connections after
    ``keepalive_timeout`` and any connection after ``keepalive_requests`` requests.

    ``GET /v1/videos/<id>`` answers a completed task with that id, ``POST /v1/videos`` a
    queued one. The access log records each request's connection; see :meth:`entries`.
    """

    name = "nginx"

    def __init__(
        self, root: Path, *, keepalive_timeout: str = "1s", keepalive_requests: int = 3
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root)
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_requests = keepalive_requests
        self.access_log = root / "access.log"
        (root / "tmp").mkdir(exist_ok=True)

    def prepare(self) -> None:
        (self.root / "nginx.conf").write_text(
            NGINX_CONF.format(
                root=self.root,
                port=self.port,
                keepalive_timeout=self.keepalive_timeout,
                keepalive_requests=self.keepalive_requests,
                created=NGINX_CREATED,
                polled=NGINX_POLLED,
            )
        )

    def command(self) -> list[str]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = str(self.root / "nginx.conf")
        return [nginx, "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", conf]

    def read_log(self, marker: str) -> list[NginxLogEntry]:
        """The access log's lines for requests whose ``X-Compat-Test`` was ``marker``."""
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.access_log.read_text().splitlines():
                match = _NGINX_LINE.match(line)
                if match is None or match[7] != marker:
                    continue
                entries.append(
                    NginxLogEntry(
                        connection=int(match[1]),
                        connection_requests=int(match[2]),
                        msec=float(match[3]),
                        method=match[4],
                        uri=match[5],
                        status=int(match[6]),
                        marker=match[7],
                    )
                )
        return entries

    async def entries(self, marker: str, count: int) -> list[NginxLogEntry]:
        """Those lines once there are ``count`` of them (nginx logs a request just after
        answering it), or whatever there is after a few seconds."""
        deadline = time.monotonic() + 5
        while True:
            entries = self.read_log(marker)
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            await asyncio.sleep(0.02)


class StaticHttpServer(_Process):
    """``python -m http.server`` (an HTTP/1.0 server) serving the files under
    :attr:`files`; its request log is :meth:`log_lines`."""

    name = "http.server"

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root)
        self.files = root / "files"
        self.files.mkdir(exist_ok=True)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(self.files),
            str(self.port),
        ]

    def add_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path`` (below the root); return its URL."""
        target = self.files / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"{self.base_url}/{path.lstrip('/')}"

    def log_lines(self, needle: str) -> list[str]:
        """The request log's lines that contain ``needle``."""
        return [line for line in _tail_all(self.output).splitlines() if needle in line]


def _tail_all(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


TINYPROXY_CONF = """\
Port {port}
Listen 127.0.0.1
Allow 127.0.0.1
Timeout 30
MaxClients 64
LogLevel Info
"""


class TinyProxy(_Process):
    """tinyproxy, a real forward proxy (plain HTTP and ``CONNECT`` to any port), in the
    foreground. It adds a ``Via`` header naming itself to what it forwards, and logs each
    request line to its output (:meth:`log_lines`; no log file, which the unprivileged
    user it drops to as root could not open). With ``basic_auth``, it answers 407 to any
    request (``CONNECT`` included) without those credentials in ``Proxy-Authorization``."""

    name = "tinyproxy"

    def __init__(self, root: Path, *, basic_auth: tuple[str, str] | None = None) -> None:
        super().__init__(root)
        self.basic_auth = basic_auth
        """``(user, password)`` that every request must carry (``BasicAuth``; a 407
        otherwise), or None for an open proxy."""

    @property
    def url(self) -> str:
        return self.base_url

    def url_with(self, user: str, password: str) -> str:
        """The proxy's URL with credentials in it (``http://user:pass@127.0.0.1:port``)."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def prepare(self) -> None:
        conf = TINYPROXY_CONF.format(port=self.port)
        if self.basic_auth is not None:
            conf += "BasicAuth {} {}\n".format(*self.basic_auth)
        if os.geteuid() == 0:
            conf += "User nobody\nGroup nogroup\n"
        (self.root / "tinyproxy.conf").write_text(conf)

    def command(self) -> list[str]:
        tinyproxy = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        return [tinyproxy, "-d", "-c", str(self.root / "tinyproxy.conf")]

    def log_lines(self, needle: str) -> list[str]:
        """The request lines it logged (``GET http://...``, ``CONNECT host:port``) that
        contain ``needle``."""
        return [
            line
            for line in _tail_all(self.output).splitlines()
            if "Request (file descriptor" in line and needle in line
        ]


# -- TLS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCA:
    """A test certificate authority and a server certificate it signed for 127.0.0.1
    (and ``localhost``)."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the signed certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def make_test_ca(directory: Path, openssl: str = "openssl") -> TestCA:
    """Make a CA and a server certificate signed by it in ``directory`` (with openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(ca_key), "-out", str(ca_cert), "-subj", "/CN=aio88 test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext),
    )  # fmt: skip
    return TestCA(ca_cert=ca_cert, server_cert=cert, server_key=key)
