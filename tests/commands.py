"""Running ``aio88`` as a user does, for the tests of ``aio88 run``: a real process
against an emulator, its JSON lines read back (``test_run_promises``, ``test_fleet_batch``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from aio88.testing import Emulator

__all__ = ["AIO88", "aio88_process", "emulator_env", "json_events", "write_jobs"]

#: The command, as the tests start it.
AIO88 = [sys.executable, "-m", "aio88"]


def emulator_env(emu: Emulator) -> dict[str, str]:
    """This environment without any ``AIO88_*`` of the developer's, pointed at ``emu``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
    env.update(AIO88_API_KEY=emu.api_key, AIO88_BASE_URL=emu.base_url)
    return env


def write_jobs(path: Path, n: int) -> Path:
    """A jobs file of ``n`` video jobs, keys ``job-<i>``, prompts ``fox <i>``."""
    lines = [{"kind": "video", "prompt": f"fox {i}", "key": f"job-{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def json_events(stdout: str) -> list[dict[str, Any]]:
    """The JSON lines of a ``--json`` run's stdout."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


async def aio88_process(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``aio88 *args`` to its end: (exit code, stdout, stderr)."""
    result = await anyio.run_process([*AIO88, *args], env=env, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()
