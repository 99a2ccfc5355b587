"""Every ```python block in the README and docs/ is a complete program, and runs.

Convention: a ```python block is a whole program and is run here, in a subprocess, with
AIO88_API_KEY and AIO88_BASE_URL pointing at the emulator; a ```py block is a fragment (a
signature, part of a program) and is only checked to parse. So the docs cannot drift from
the code.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import anyio
import pytest

from aio88.testing import Emulator

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(python|py)\n(.*?)^```", re.M | re.S)


def blocks(kind: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), start=1):
            if match.group(1) == kind:
                found.append((f"{page.relative_to(ROOT)}#{number}", match.group(2)))
    return found


PROGRAMS = blocks("python")
FRAGMENTS = blocks("py")


def test_there_are_programs_to_run() -> None:
    """The convention is in use: the README and the docs have runnable programs."""
    assert len(PROGRAMS) >= 3
    assert any(name.startswith("README") for name, _ in PROGRAMS)


@pytest.mark.parametrize(("name", "code"), FRAGMENTS, ids=[n for n, _ in FRAGMENTS])
def test_fragments_parse(name: str, code: str) -> None:
    """Fragments are at least valid Python (top-level await allowed)."""
    compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize(("name", "code"), PROGRAMS, ids=[n for n, _ in PROGRAMS])
async def test_programs_run(name: str, code: str, tmp_path: Path) -> None:
    """Each program runs to completion against the emulator, in a fresh process."""
    async with Emulator(duration=(0.05, 0.2), dialect="newapi") as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
        env.update(AIO88_API_KEY=emu.api_key, AIO88_BASE_URL=emu.base_url)
        script = tmp_path / "program.py"
        script.write_text(code)
        result = await anyio.run_process(
            [sys.executable, str(script)], cwd=tmp_path, env=env, check=False
        )
    assert result.returncode == 0, f"{name} failed:\n{result.stderr.decode()[-2000:]}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_programs_type_check(tmp_path: Path) -> None:
    """The docs' programs and examples pass ``mypy --strict``, as users' code would."""
    mypy = pytest.importorskip("mypy.api")
    for name, code in PROGRAMS:
        stem = re.sub(r"[^a-z0-9]+", "_", name.lower())
        (tmp_path / f"{stem}.py").write_text(code)
    for example in (ROOT / "docs" / "examples").glob("*.py"):
        (tmp_path / example.name).write_text(example.read_text())
    out, err, status = mypy.run(["--strict", "--no-incremental", str(tmp_path)])
    assert status == 0, out + err
