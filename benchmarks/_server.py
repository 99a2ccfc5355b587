"""A static stand-in for the API's GET endpoints, so that benchmarks measure the client.

nginx (Debian's ``nginx-light``) on loopback with one worker serves fixed JSON for
``/v1/videos/{id}`` and ``/v1/video/generations/{id}`` (both dialects) and large files
for ``/v1/videos/{id}/content``. When nginx is missing, the emulator runs in a separate
process instead, and :attr:`StaticServer.kind` says so.

    with StaticServer(files={"big": 256 * 2**20}) as server:
        server.base_url, server.path_of("big")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

#: A terminal task in each shape the client decodes (fixed: the client is measured).
VIDEO_DOCS = {
    "id": "task_bench",
    "object": "video",
    "model": "sora-2",
    "created_at": 1712697600,
    "status": "succeeded",
    "progress": 100,
    "expires_at": 1712784000,
    "size": "1280x720",
    "seconds": "8",
    "quality": "standard",
    "url": "",
    "remixed_from_video_id": None,
    "error": None,
}
GENERATION_NEWAPI = {
    "code": "success",
    "message": "",
    "data": {
        "id": 42,
        "task_id": "task_bench",
        "platform": "kling",
        "action": "generate",
        "status": "SUCCESS",
        "progress": "100%",
        "fail_reason": "",
        "result_url": "",
        "submit_time": 1712697600,
        "start_time": 1712697601,
        "finish_time": 1712697700,
        "created_at": 1712697600,
        "updated_at": 1712697700,
        "quota": 10,
        "data": {"vendor_task_id": "v-1"},
    },
}

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/v1/videos/([^/]+)/content$ {{
            default_type video/mp4;
            alias {root}/files/$1;
        }}
        location ~ ^/v1/videos/([^/]+)$ {{ return 200 '{video}'; }}
        location ~ ^/v1/video/generations/([^/]+)$ {{ return 200 '{generation}'; }}
    }}
}}
"""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for _ in range(size >> 20):
            out.write(block)
        out.write(block[: size & ((1 << 20) - 1)])


class StaticServer:
    """nginx on loopback (or the emulator in a subprocess when nginx is missing)."""

    def __init__(self, files: dict[str, int] | None = None) -> None:
        self.files = files or {}
        self.root = Path(tempfile.mkdtemp(prefix="aio88-bench-"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.kind = "nginx" if shutil.which("nginx") else "emulator (nginx not installed)"
        self._proc: subprocess.Popen[bytes] | None = None

    def path_of(self, name: str) -> Path:
        """The local path of a served file (to compare checksums)."""
        return self.root / "files" / name

    def __enter__(self) -> StaticServer:
        self.root.chmod(0o755)  # nginx workers run as an unprivileged user
        (self.root / "files").mkdir()
        (self.root / "tmp").mkdir()
        for name, size in self.files.items():
            _write_file(self.path_of(name), size)
        if self.files:
            # Flush the new files now: their writeback would otherwise run during the
            # first measurements and slow whichever client happens to go first.
            os.sync()
        if self.kind == "nginx":
            conf = self.root / "nginx.conf"
            # Each answer carries the id that was asked for, as the API's do (the client
            # refuses an answer about another task).
            video = json.dumps({**VIDEO_DOCS, "id": "$1"}, separators=(",", ":"))
            generation = json.dumps(
                {**GENERATION_NEWAPI, "data": {**GENERATION_NEWAPI["data"], "task_id": "$1"}},
                separators=(",", ":"),
            )
            conf.write_text(
                NGINX_CONF.format(
                    root=self.root, port=self.port, video=video, generation=generation
                )
            )
            command = ["nginx", "-c", str(conf), "-p", str(self.root)]
        else:
            command = [
                sys.executable,
                "-m",
                "aio88.testing",
                "--port",
                str(self.port),
                "--any-id",
                "--duration",
                "0.001",
                "0.001",
            ]
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{self.kind} did not start: {self._proc.stderr}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM if self.kind == "nginx" else signal.SIGINT)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)
