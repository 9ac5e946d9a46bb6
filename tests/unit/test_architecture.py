"""The import graph of ``src/nightcore``: no cycles, and no import of a higher layer from a
lower one (docs/architecture.md lists the layers and says why each sits where it does).

Every import counts, including the lazy ones inside functions and those under
``TYPE_CHECKING``: a lazy import is still a dependency, only a cheaper one at start-up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "nightcore"

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "nightcore",  # the package itself: __version__ only
            "nightcore.errors",
            "nightcore.codes",
            "nightcore.canonical",
            "nightcore.fsio",
            "nightcore.ids",
            "nightcore.untrusted",
            "nightcore.versions",
            "nightcore.layout",
            "nightcore.dashboard_defaults",
            "nightcore.sandbox.types",
        ),
    ),
    ("trust", ("nightcore.trust",)),
    ("module", ("nightcore.module", "nightcore.store", "nightcore.policy")),
    ("engines", ("nightcore.sandbox", "nightcore.audit")),
    ("node state", ("nightcore.evidence", "nightcore.config", "nightcore.context")),
    (
        "operations",
        ("nightcore.runner", "nightcore.trustops", "nightcore.aufs", "nightcore.release"),
    ),
    ("views", ("nightcore.dashboard",)),
    ("facade", ("nightcore.app",)),
    (
        "hosts",
        (
            "nightcore.node",
            "nightcore.mesh",
            "nightcore.dashboard.server",
            "nightcore.dashboard.routes",
            "nightcore.dashboard.actions",
        ),
    ),
    ("shell", ("nightcore.cli", "nightcore.demo", "nightcore.doctor", "nightcore.__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
            # `from pkg import sub` names the submodule; `from pkg import obj` the package
            targets = [t for t in targets[:-1] if t in modules] or [base]
        for t in targets:
            if t == PACKAGE or t.startswith(PACKAGE + "."):
                resolved = _resolve(t, modules)
                if resolved is not None and resolved != name:
                    found.add(resolved)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(name: str) -> int:
    best, rank = -1, -1
    for i, (_label, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # The package itself is listed alone: its entry does not cover its modules.
            inside = prefix != PACKAGE and name.startswith(prefix + ".")
            if (name == prefix or inside) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank < 0:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS and docs/architecture.md")
    return rank


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if any (iterative DFS: no recursion limit to hit)."""
    color: dict[str, int] = {}
    for start in sorted(g):
        if color.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(g[start]))]
        path = [start]
        color[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                color[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            state = color.get(nxt, 0)
            if state == 1:
                return [*path[path.index(nxt) :], nxt]
            if state == 0:
                color[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(g.get(nxt, ()))))
    return None


def test_every_module_has_a_layer() -> None:
    for name in all_modules():
        layer_of(name)


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_of_a_higher_layer() -> None:
    bad = []
    for name, deps in sorted(graph().items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(name):
                bad.append(
                    f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} "
                    f"({LAYERS[layer_of(dep)][0]})"
                )
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_the_checker_sees_cycles_and_upward_imports() -> None:
    # The checks above must be able to fail: a made-up graph with one of each.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("nightcore.audit.log") < layer_of("nightcore.runner.pipeline")
    assert layer_of("nightcore.dashboard.server") > layer_of("nightcore.app")
    assert layer_of("nightcore.dashboard.collect") < layer_of("nightcore.app")


@pytest.mark.parametrize("name", ["nightcore.cli.main", "nightcore.runner.pipeline"])
def test_graph_finds_lazy_imports(name: str) -> None:
    # Lazy imports inside functions are dependencies too.
    deps = graph()[name]
    assert deps, f"{name} has no project imports?"


def test_the_node_socket_name_and_root_agree() -> None:
    # The thin client computes the socket path without pathlib; it must be the layout's.
    import os

    from nightcore.layout import NODE_SOCKET_NAME, Layout, find_root
    from nightcore.node.protocol import SOCKET_NAME, socket_path

    assert SOCKET_NAME == NODE_SOCKET_NAME
    for explicit in (".", "..", None):
        assert socket_path(explicit) == str(Layout(find_root(explicit)).node_socket)
    assert os.path.isabs(socket_path("relative/dir"))


def _imported_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter (``-I``) holds after running ``code``."""
    import subprocess
    import sys

    probe = f"import sys\n{code}\nprint(','.join(m for m in {modules!r} if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    return out.split(",") if out else []


def test_the_thin_client_imports_nothing_heavy() -> None:
    heavy = ("wasmtime", "cryptography", "nightcore.app", "pathlib", "dataclasses")
    code = "import nightcore.cli.main, nightcore.cli.context, nightcore.node.client"
    assert _imported_after(code, heavy) == [], "the client path imports these"


def test_a_node_served_command_parses_without_typing_or_shutil() -> None:
    """``typing`` (~3 ms) and ``shutil`` (~3 ms: argparse's help formatter asks it for the
    terminal width on every add_argument) are not needed to parse ``run`` and reach a node:
    ~12% of a cold ``nightcore run`` through a node (docs/performance.md)."""
    code = (
        "from nightcore.cli.main import build_parser\n"
        "import nightcore.cli.context, nightcore.cli.render, nightcore.node.client\n"
        "import nightcore.canonical\n"
        "args = build_parser().parse_args(['run', 'hello', '--no-dashboard', '--json'])\n"
        "assert args.command == 'run'"
    )
    assert _imported_after(code, ("typing", "shutil")) == []


def test_the_run_path_leaves_the_net_client_for_net_runs() -> None:
    """http.client, ssl and email cost ~10 ms of a cold run's start: only a run with a NET
    grant needs them (nightcore.sandbox.net imports them when it performs a request)."""
    code = "import nightcore.sandbox.engine, nightcore.runner.pipeline"
    assert _imported_after(code, ("http.client", "ssl", "email.parser")) == []
