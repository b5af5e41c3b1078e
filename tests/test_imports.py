"""How crowtwist's modules depend on each other: each imports alone, one way, through public names.

The layers, top to bottom (a module imports its own layer and the ones below it, never above):

    crowtwist, crowtwist.tap            the faces: the package's names and ``twistd crow``
    crowtwist._app                      the app: routes, settings changes, serving
    crowtwist._resource                 the twisted.web tree of routes
    crowtwist.websocket[.*]             rules, the protocol, connections, dispatch, upgrades
    crowtwist._http, crowtwist._site    plain HTTP rules and the Site
    _routing, _handlers, _headers, ...  plain helpers (and the Twisted seam)
    crowtwist._settings, _version       settings and their validation; import no crowtwist module

The graph is static: every ``import`` and ``from ... import`` of a crowtwist
module counts, including those under ``if TYPE_CHECKING:`` and inside
functions, since either one still ties the two modules together.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "crowtwist"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("faces", ("crowtwist", "crowtwist.tap", "crowtwist.__main__", "crowtwist.testing", "crowtwist._testing",
               "crowtwist.pytest_plugin")),
    ("app", ("crowtwist._app",)),
    ("resource", ("crowtwist._resource",)),
    ("websocket", ("crowtwist.websocket", "crowtwist.websocket.*")),
    ("http", ("crowtwist._http", "crowtwist._site", "crowtwist._middleware", "crowtwist._cors", "crowtwist._cookies")),
    ("helpers", ("crowtwist._routing", "crowtwist._handlers", "crowtwist._headers", "crowtwist._twisted", "crowtwist._peer",
                 "crowtwist._broker", "crowtwist._workers", "crowtwist._response", "crowtwist._request",
                 "crowtwist._compress", "crowtwist._static",
                 "crowtwist._speedups")),
    ("settings", ("crowtwist._settings", "crowtwist._version", "crowtwist._log")),
]
"""Which module is in which layer; a new module must be placed here."""

SEAMS = frozenset(
    {"crowtwist/_twisted.py", *(f"crowtwist/websocket/_autobahn/{name}.py" for name in ("__init__", "_guard", "_fast", "_closing"))}
)
"""Where Twisted's and autobahn's private names are meant to be read, so exempt from the privates check."""


# The modules.


def walk(path: Path, prefix: str) -> Iterator[str]:
    """Every module and package under ``path``, by name, without importing any of them."""
    for info in pkgutil.iter_modules([str(path)]):
        name = prefix + info.name
        yield name
        if info.ispkg:
            yield from walk(path / info.name, name + ".")


MODULES = sorted(["crowtwist", *walk(PACKAGE, "crowtwist."), "twisted.plugins.crowtwist_plugin"])


def sources() -> dict[str, Path]:
    """Each crowtwist module written in Python, and its file."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


SOURCES = sources()
NAMES = set(SOURCES) | set(MODULES)
"""Every module name: those with a source file and compiled ones (``_speedups``)."""


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


# Importing each module alone.


@pytest.fixture(scope="module")
def fresh_imports() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One fresh interpreter per module, all started at once, each importing only that module."""
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    script = "import importlib, sys; importlib.import_module(sys.argv[1])"
    processes = {
        module: subprocess.Popen(
            [sys.executable, "-c", script, module],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for module in MODULES
    }
    try:
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(fresh_imports: dict[str, subprocess.Popen[str]], module: str) -> None:
    """The module imports in a fresh interpreter with nothing imported before it."""
    process = fresh_imports[module]
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, f"import {module} failed:\n{output}"


def test_the_walk_finds_the_modules() -> None:
    """The walk sees the subpackage's modules and the twistd entry point, so the test above covers them."""
    expected = {"crowtwist.tap", "crowtwist._settings", "crowtwist.websocket._rule", "twisted.plugins.crowtwist_plugin"}
    assert expected <= set(MODULES)


# The static import graph.


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str
    """file:line, and how the import is guarded."""


def package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name of the module a ``from`` import reads from."""
    if not node.level:
        return node.module or ""
    base = package_of(module, path).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def guards(tree: ast.Module) -> dict[ast.AST, str]:
    """For each import not at module level, what it sits under (a TYPE_CHECKING block, a function)."""
    found: dict[ast.AST, str] = {}

    def visit(node: ast.AST, context: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = context
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = f"inside {child.name}()"
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = context or "under TYPE_CHECKING"
            if isinstance(child, (ast.Import, ast.ImportFrom)) and inner:
                found[child] = inner
            visit(child, inner)

    visit(tree, "")
    return found


def edges() -> list[Edge]:
    """Every import of a crowtwist module by a crowtwist module, wherever it is written."""
    found: list[Edge] = []
    for module, path in SOURCES.items():
        tree = ast.parse(path.read_text(), str(path))
        guarded = guards(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = resolve(module, path, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in NAMES else source)
            for target in targets:
                if target.split(".")[0] == "crowtwist" and target != module:
                    where = f"{relative(path)}:{node.lineno}" + (f" ({guarded[node]})" if node in guarded else "")
                    found.append(Edge(module, target, where))
    return found


EDGES = edges()


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph``: for each edge inside a strongly connected component, the shortest one through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    def shortest_path(start: str, goal: str, within: set[str]) -> list[str]:
        paths = {start: [start]}
        frontier = [start]
        while goal not in paths:
            frontier = [
                paths.setdefault(successor, paths[node] + [successor])[-1]
                for node in frontier
                for successor in sorted(graph.get(node, ()))
                if successor in within and successor not in paths
            ]
        return paths[goal]

    cycles: list[list[str]] = []
    for component in components:
        for importer in sorted(component):
            for imported in sorted(graph[importer] & component):
                cycle = [importer, *shortest_path(imported, importer, component)]
                first = cycle.index(min(cycle[:-1]))
                cycle = cycle[first:-1] + cycle[:first] + [cycle[first]]  # start each cycle at its least module
                if cycle not in cycles:
                    cycles.append(cycle)
    return cycles


def describe(cycle: list[str]) -> str:
    lines = [" -> ".join(cycle)]
    for importer, imported in zip(cycle, cycle[1:]):
        lines.extend(
            f"    {importer} imports {imported} at {where}"
            for where in sorted({e.where for e in EDGES if (e.importer, e.imported) == (importer, imported)})
        )
    return "\n".join(lines)


def test_the_graph_sees_guarded_imports() -> None:
    """The graph helpers see imports under TYPE_CHECKING and inside functions, and find every cycle."""
    sample = ast.parse("if TYPE_CHECKING:\n    import a\ndef f():\n    import b\nimport c\n")
    assert sorted(guards(sample).values()) == ["inside f()", "under TYPE_CHECKING"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}) == [["a", "b", "a"], ["b", "c", "b"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    """No crowtwist module reaches itself through imports, counting TYPE_CHECKING and function-level ones."""
    graph: dict[str, set[str]] = {}
    for edge in EDGES:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(cycle) for cycle in cycles)


def layer_of(module: str) -> int | None:
    for number, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return number
    return None


def test_every_module_has_a_layer() -> None:
    """Each crowtwist module is placed in LAYERS, so the layering test judges it."""
    modules = {m for m in MODULES if m.startswith("crowtwist")} | set(SOURCES)
    modules |= {edge.imported for edge in EDGES}
    assert not sorted(m for m in modules if layer_of(m) is None)


def test_imports_follow_the_layers() -> None:
    """A module imports modules of its own layer or lower ones, never of a layer above it."""
    upward = []
    for edge in EDGES:
        mine, theirs = layer_of(edge.importer), layer_of(edge.imported)
        if mine is not None and theirs is not None and theirs < mine:
            upward.append(
                f"{edge.importer} ({LAYERS[mine][0]}) imports {edge.imported} ({LAYERS[theirs][0]}) at {edge.where}"
            )
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_settings_import_no_crowtwist_module() -> None:
    """crowtwist._settings stands alone: the app, rules and tap import it, it imports none of them."""
    assert [edge.where for edge in EDGES if edge.importer == "crowtwist._settings"] == []
    assert "crowtwist._settings" in SOURCES


def test_rules_do_not_know_the_app() -> None:
    """The WebSocket side never imports the app, resource or faces, even for type checking."""
    above = {"crowtwist", "crowtwist.tap", "crowtwist._app", "crowtwist._resource"}
    found = [
        f"{e.importer} imports {e.imported} at {e.where}"
        for e in EDGES
        if e.importer.startswith("crowtwist.websocket") and e.imported in above
    ]
    assert not found, "\n".join(found)


# Private names.


def defined_names(tree: ast.Module) -> set[str]:
    """What a module defines for attribute access: defs, class attributes, ``self._x =``, ``__slots__``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets: list[ast.expr] = []
                value: ast.expr | None = None
                if isinstance(statement, ast.Assign):
                    targets, value = statement.targets, statement.value
                elif isinstance(statement, ast.AnnAssign):
                    targets, value = [statement.target], statement.value
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.add(target.id)
                        if target.id == "__slots__" and value is not None:
                            names.update(
                                item.value
                                for item in ast.walk(value)
                                if isinstance(item, ast.Constant) and isinstance(item.value, str)
                            )
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for element in ast.walk(target):
                if (
                    isinstance(element, ast.Attribute)
                    and isinstance(element.value, ast.Name)
                    and element.value.id in ("self", "cls")
                ):
                    names.add(element.attr)
    return names


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reads(module: str, path: Path) -> list[str]:
    """``expr._name`` not on self/cls, for a ``_name`` this module does not define; ``from X import _name``.

    ``getattr(expr, "_name")`` and its kin count as ``expr._name``, on self too:
    a literal private name read that way is someone else's (a base class's).
    """
    tree = ast.parse(path.read_text(), str(path))
    ours = defined_names(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        name: str | None = None
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                name = node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
        ):
            name = node.args[1].value
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, path, node)
            if source.split(".")[0] == "crowtwist":
                for alias in node.names:
                    if private(alias.name) and f"{source}.{alias.name}" not in NAMES:
                        found.append(f"{relative(path)}:{node.lineno}: from {source} import {alias.name}")
            continue
        if name is not None and name not in ours:
            found.append(f"{relative(path)}:{line}: {ast.unparse(node)}")
    return found


def test_the_privates_check_sees_reads(tmp_path: Path) -> None:
    """The check flags another object's private name and lets a module's own ones through."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "class A:\n"
        "    __slots__ = ('_s',)\n"
        "    _k = 1\n"
        "    def _m(self, other):\n"
        "        self._x = other._x\n"
        "        return other._s, other._k, other._m, other._y, getattr(other, '_z'), other.__dict__\n"
    )
    found = private_reads("sample", sample)
    assert [line.split(": ", 1)[1] for line in found] == ["other._y", "getattr(other, '_z')"]


def test_no_module_reads_another_modules_private_names() -> None:
    """No crowtwist module reads a private name it does not define, or imports one from another module."""
    found = [
        line
        for module, path in SOURCES.items()
        if relative(path) not in SEAMS
        for line in private_reads(module, path)
    ]
    assert not found, "private names read across modules:\n" + "\n".join(sorted(found))
