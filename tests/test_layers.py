"""The package's imports point one way, down, as DESIGN.md's "Layout" draws them:

    _cli -> Client (facade) -> resources -> engines -> Transport -> leaves

Every import of an aio88 module counts, also under ``TYPE_CHECKING`` and inside functions.
A module missing from the table fails the test, so a new module gets a layer on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "aio88"

#: Each module's layer; a module may import only from its own layer or below, and never
#: in a circle.
LAYERS: dict[str, int] = {
    # leaves: values, maths, formats; they import only each other
    "_version": 0,
    "_config": 0,
    "_errors": 0,
    "_models": 0,
    "_retry": 0,
    "_schedule": 0,
    "_clock": 0,
    "_proxies": 0,
    "_writer": 0,
    "_partfile": 0,
    "_ledger": 0,
    "_headers": 0,
    "_outcome": 0,
    # the transport: aiohttp, auth, pacing, the one retry driver
    "_failures": 1,
    "_sessions": 1,
    "_body": 1,
    "_http": 1,
    # engines: each takes a Transport (and callables), never a Client
    "_fetch": 2,
    "_poll": 2,
    "_download": 2,
    "_watch": 2,
    "_stream": 2,
    # resources: client.generations, client.videos
    "_resources": 3,
    # the facade
    "_client": 4,
    # what users and the command line meet
    "_cli": 5,
    "__init__": 5,
    "__main__": 6,
    # the test kit (the emulator, which the demo runs), a subpackage beside the CLI
    "testing": 5,
}
LEAVES = 0


def _imports(module: str) -> set[str]:
    """The aio88 modules ``module`` imports (anywhere in it)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from ._x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import _x
                found.update(alias.name for alias in node.names)
            elif node.module == "aio88":  # from aio88 import X: the package's front
                found.add("__init__")
            elif node.module and node.module.startswith("aio88."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "aio88":
                    found.add("__init__")
                elif alias.name.startswith("aio88."):
                    found.add(alias.name.split(".")[1])
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in LAYERS if module != "testing"}
GRAPH["testing"] = set()  # its own modules import nothing from aio88 (checked below)


def test_every_module_has_a_layer() -> None:
    """A module missing from the table (or a stale entry) fails here."""
    on_disk = {path.stem for path in PACKAGE.glob("*.py")} | {"testing"}
    assert on_disk == set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_point_down(module: str) -> None:
    """No import climbs to a higher layer."""
    up = [name for name in GRAPH[module] if LAYERS[name] > LAYERS[module]]
    assert not up, f"{module} (layer {LAYERS[module]}) imports higher layers: {up}"


def test_no_import_cycle() -> None:
    """No circle, not even through TYPE_CHECKING imports."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(GRAPH[module]):
            if state.get(name) == "open":
                cycle = [*path[path.index(name) :], name] if name in path else [module, name]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_leaves_import_only_leaves() -> None:
    """Leaves (errors, config, models, retry maths, schedule...) import only each other."""
    for module, layer in LAYERS.items():
        if layer == LEAVES:
            assert all(LAYERS[name] == LEAVES for name in GRAPH[module]), module


def test_the_emulator_imports_nothing_from_the_client() -> None:
    """aio88.testing builds its JSON from plain dicts: nothing from aio88's own modules,
    so a wrong field name in the client cannot agree with itself. (The pytest plugin,
    which hands out a ready client, is the one module there that may.)"""
    for path in (PACKAGE / "testing").glob("*.py"):
        if path.name == "pytest_plugin.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                pytest.fail(f"{path.name} imports from aio88 itself: ..{node.module}")
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            if module.startswith("aio88") and not module.startswith("aio88.testing"):
                pytest.fail(f"{path.name} imports {module}")
            if isinstance(node, ast.Import) and any(
                a.name == "aio88" or a.name.startswith("aio88._") for a in node.names
            ):
                pytest.fail(f"{path.name} imports aio88 itself")
