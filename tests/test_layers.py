"""The package's imports point one way, down, as DESIGN.md's "Layout" draws them:

    _cli -> Client (facade) -> resources -> engines -> Transport -> leaves

Every import of an aio88 module counts, also under ``TYPE_CHECKING`` and inside functions.
A subpackage (``_cli``, ``testing``) is one module of one layer: the imports of all its
files count. A module missing from the table fails the test, so a new module gets a layer
on purpose.
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
    "_sending": 0,
    "_billing": 0,
    "_congestion": 0,
    "_webhooks": 0,
    "_coordination": 0,
    # the transport: aiohttp, auth, pacing, the one retry driver
    "_failures": 1,
    "_sessions": 1,
    "_body": 1,
    "_http": 1,
    "_pacing": 1,
    # engines: each takes a Transport (and callables), never a Client
    "_fetch": 2,
    "_poll": 2,
    "_download": 2,
    "_watch": 2,
    "_stream": 2,
    "_dashboard": 2,
    # resources: client.generations, client.videos
    "_resources": 3,
    # the facade
    "_client": 4,
    # what users and the command line meet; the CLI is a subpackage, one layer for all
    # its modules
    "_cli": 5,
    "__init__": 5,
    "__main__": 6,
    # the test kit (the emulator, which the demo runs), a subpackage beside the CLI; its
    # pytest plugin hands out a ready Client
    "testing": 5,
    # the fleet (PostgreSQL): implements the leaf protocols of _coordination; never
    # imported by the package's front, and importing nothing above the leaves
    "fleet": 5,
}
LEAVES = 0


def _sources(module: str) -> list[Path]:
    """The files of a module: ``aio88/<module>.py``, or every file of the subpackage
    ``aio88/<module>/``, which counts as one module of one layer."""
    folder = PACKAGE / module
    return sorted(folder.glob("*.py")) if folder.is_dir() else [PACKAGE / f"{module}.py"]


def _imports(module: str) -> set[str]:
    """The aio88 modules ``module`` imports (anywhere in it, in any of its files); a
    subpackage's imports of its own modules are left out."""
    found: set[str] = set()
    top = 2 if (PACKAGE / module).is_dir() else 1  # the dots of ``from .<top module>``
    for path in _sources(module):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == top and node.module:  # from ._x import y
                    found.add(node.module.split(".")[0])
                elif node.level == top:  # from . import _x, or the front: from . import X
                    found.update(a.name if a.name in LAYERS else "__init__" for a in node.names)
                elif node.level == 0 and node.module == "aio88":  # the package's front
                    found.add("__init__")
                elif node.level == 0 and node.module and node.module.startswith("aio88."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "aio88":
                        found.add("__init__")
                    elif alias.name.startswith("aio88."):
                        found.add(alias.name.split(".")[1])
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in LAYERS}
SUBPACKAGES = sorted(module for module in LAYERS if (PACKAGE / module).is_dir())


def test_every_module_has_a_layer() -> None:
    """A module or subpackage missing from the table (or a stale entry) fails here."""
    files = {path.stem for path in PACKAGE.glob("*.py")}
    folders = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert files | folders == set(LAYERS)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_a_subpackage_imports_itself_in_no_circle(package: str) -> None:
    """Within a subpackage (the CLI, the test kit), too, imports point one way."""
    folder = PACKAGE / package
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        graph[path.stem] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                graph[path.stem].update(name.split(".")[0] for name in names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["aio88", package]:
                    graph[path.stem].update(parts[2:3] or ["__init__"])
        graph[path.stem] &= {p.stem for p in folder.glob("*.py")}
        graph[path.stem].discard(path.stem)
    _assert_no_cycle(graph, f"{package}.")


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_point_down(module: str) -> None:
    """No import climbs to a higher layer."""
    up = [name for name in GRAPH[module] if LAYERS[name] > LAYERS[module]]
    assert not up, f"{module} (layer {LAYERS[module]}) imports higher layers: {up}"


def _assert_no_cycle(graph: dict[str, set[str]], prefix: str = "") -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(graph[module]):
            if state.get(name) == "open":
                cycle = [*path[path.index(name) :], name] if name in path else [module, name]
                pytest.fail("import cycle: " + " -> ".join(prefix + m for m in cycle))
            if name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_import_cycle() -> None:
    """No circle, not even through TYPE_CHECKING imports."""
    _assert_no_cycle(GRAPH)


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
