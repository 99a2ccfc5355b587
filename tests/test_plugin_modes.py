"""The pytest plugin's fixtures under each plugin that runs async tests, as users set it up.

Each case writes a tiny project (the test and the configuration docs/testing.md shows,
plus at most the one marker the page says to add) and runs pytest on it in a fresh process
with ``-W error``: the fixtures' plugin choice happens at pytest's start-up, which cannot be
redone inside this suite's own run (anyio's plugin, auto mode).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).parent.parent

#: The test docs/testing.md shows, as it shows it; each case puts its marker on top.
SNIPPET = """\
import pytest


@pytest.mark.aio88_emulator(dialect="newapi", duration=None)  # Emulator(**kwargs)
async def test_my_service(aio88_client, aio88_emulator):
    task = await aio88_client.videos.create(prompt="a red fox")
    aio88_emulator.complete(task.id)  # or aio88_emulator.fail(task.id, "reason"), ...
    assert (await aio88_client.videos.wait(task.id)).status == "succeeded"
"""

#: The configurations docs/testing.md shows (an empty section: the default, strict modes).
NO_CONFIG = "[tool.pytest.ini_options]\n"
ANYIO_AUTO = '[tool.pytest.ini_options]\nanyio_mode = "auto"\n'
ASYNCIO_AUTO = (
    "[tool.pytest.ini_options]\n"
    'asyncio_mode = "auto"\n'
    'asyncio_default_fixture_loop_scope = "function"\n'
)
ASYNCIO_STRICT = '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n'

#: Blocks pytest-asyncio, as in a project that does not have it (it is installed here).
WITHOUT_PYTEST_ASYNCIO = ("-p", "no:asyncio")

#: (marker line or "", pyproject.toml, extra pytest arguments), by case.
SETUPS = {
    "anyio-marked": ("@pytest.mark.anyio", NO_CONFIG, WITHOUT_PYTEST_ASYNCIO),
    "anyio-auto": ("", ANYIO_AUTO, WITHOUT_PYTEST_ASYNCIO),
    # A project moving between the two: pytest-asyncio installed, strict, unused here.
    "anyio-marked-beside-pytest-asyncio": ("@pytest.mark.anyio", ASYNCIO_STRICT, ()),
    "asyncio-auto": ("", ASYNCIO_AUTO, ()),
    "asyncio-strict": ("@pytest.mark.asyncio", ASYNCIO_STRICT, ()),
    # A loop wider than the test: the fixtures must start on that one, not their own.
    "asyncio-module-loop": ('@pytest.mark.asyncio(loop_scope="module")', ASYNCIO_STRICT, ()),
}

#: Whether pytest-asyncio is installed (the test extra has it).
HAS_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None

#: Whether aio88's plugin is registered (aio88 installed, as with ``pip install -e .``).
HAS_PLUGIN = any(
    entry.value == "aio88.testing.pytest_plugin"
    for entry in importlib.metadata.entry_points(group="pytest11")
)


def project_env() -> dict[str, str]:
    """This environment, minus what would change the inner pytest's set-up; ``aio88``
    importable from this source tree even where it is not the installed one."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
        and not name.startswith("PYTEST_CURRENT")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.skipif(not HAS_PLUGIN, reason="needs aio88 installed (its pytest11 entry point)")
@pytest.mark.timeout(60)  # a pytest start-up in a fresh process, on a busy machine
@pytest.mark.parametrize("setup", list(SETUPS))
async def test_the_docs_test_passes(setup: str, tmp_path: Path) -> None:
    """The docs' test passes, without a warning, under each plugin and mode."""
    marker, config, arguments = SETUPS[setup]
    if not arguments and not HAS_PYTEST_ASYNCIO:
        pytest.skip("needs pytest-asyncio (the test extra)")
    (tmp_path / "pyproject.toml").write_text(config)
    (tmp_path / "test_service.py").write_text(
        SNIPPET.replace("\n\n\n", f"\n\n\n{marker}\n", 1) if marker else SNIPPET
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error"]
    result = await anyio.run_process(
        [*command, *arguments], cwd=tmp_path, env=project_env(), check=False
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output
    assert "1 passed" in output, output
    assert "warning" not in output.lower(), output


def test_the_docs_show_these_setups() -> None:
    """The test and configurations above are the page's own, so the two cannot drift."""
    page = ROOT / "docs" / "testing.md"
    if not page.is_file():
        pytest.skip(f"needs the docs/ folder beside tests/ ({page})")
    text = page.read_text()
    assert f"```py\n{SNIPPET}```" in text
    for config in (ANYIO_AUTO, ASYNCIO_AUTO, ASYNCIO_STRICT):
        assert f"```toml\n{config}```" in text
    for marker in {marker for marker, _, _ in SETUPS.values() if marker}:
        assert f"`{marker}`" in text
