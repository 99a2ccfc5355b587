"""Every ```python block in the README and docs/ is a complete program, and runs.

Convention: a ```python block is a whole program and is run here, in a subprocess, with
AIO88_API_KEY and AIO88_BASE_URL pointing at the emulator; a ```py block is a fragment (a
signature, part of a program) and is only checked to parse. So the docs cannot drift from
the code.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from side_by_side import SideBySide, side_by_side

from aio88.testing import Emulator

ROOT = Path(__file__).parent.parent
if not (ROOT / "docs").is_dir():  # a source tree without docs/ (the sdist ships them)
    pytest.skip(f"needs the docs/ folder beside tests/ ({ROOT / 'docs'})", allow_module_level=True)
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


async def run_program(name: str, code: str, folder: Path) -> tuple[int, str]:
    """Run one program in a fresh process against its own emulator; exit code, errors.

    The emulator sends a poll hint (``openai-poll-after-ms``), which the client's default
    schedule follows down to its floor (1 s), so the programs do not wait out the docs'
    5-second tier; their code is as printed.
    """
    async with Emulator(duration=(0.05, 0.2), dialect="newapi", poll_after_ms=50) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIO88_")}
        env.update(AIO88_API_KEY=emu.api_key, AIO88_BASE_URL=emu.base_url)
        script = folder / "program.py"
        script.write_text(code)
        result = await anyio.run_process(
            [sys.executable, str(script)], cwd=folder, env=env, check=False
        )
    return result.returncode, result.stderr.decode(errors="replace")


async def type_check(folder: Path) -> tuple[int, str]:
    """``mypy --strict`` over the docs' programs and examples, in its own process (it is
    big; in-process it would also hold up the interpreter's exit). Exit code, output."""
    for name, code in PROGRAMS:
        stem = re.sub(r"[^a-z0-9]+", "_", name.lower())
        (folder / f"{stem}.py").write_text(code)
    for example in (ROOT / "docs" / "examples").glob("*.py"):
        (folder / example.name).write_text(example.read_text())
    result = await anyio.run_process(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(folder)],
        cwd=ROOT,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


#: Whether mypy (the dev extra) is installed.
HAS_MYPY = importlib.util.find_spec("mypy") is not None


@pytest.fixture(scope="module")
async def programs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, anyio_backend: str
) -> AsyncIterator[SideBySide]:
    """Every selected program, and the type check, started at once in the background
    (they mostly wait, the type check on another core)."""
    selected = {
        item.callspec.params["name"] if hasattr(item, "callspec") else item.name
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.path == request.path
    }
    async with side_by_side() as background:
        if HAS_MYPY and "test_programs_type_check" in selected:
            folder = tmp_path_factory.mktemp("typed")
            background.start("mypy", functools.partial(type_check, folder))
        for name, code in PROGRAMS:
            if name in selected:
                folder = tmp_path_factory.mktemp("program")
                background.start(name, functools.partial(run_program, name, code, folder))
        yield background


@pytest.mark.slow
@pytest.mark.timeout(60)  # waits for a program that runs beside the others
@pytest.mark.parametrize(("name", "code"), PROGRAMS, ids=[n for n, _ in PROGRAMS])
async def test_programs_run(name: str, code: str, programs: SideBySide) -> None:
    """Each program runs to completion against the emulator, in a fresh process."""
    returncode, errors = await programs.result(name)
    assert returncode == 0, f"{name} failed:\n{errors[-2000:]}"


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not HAS_MYPY, reason="needs mypy (the dev extra)")
async def test_programs_type_check(programs: SideBySide) -> None:
    """The docs' programs and examples pass ``mypy --strict``, as users' code would."""
    status, output = await programs.result("mypy")
    assert status == 0, output
