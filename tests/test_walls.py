"""The walls between minict's parts, read from the imports of its source.

The package is the pipeline: image/ (reference -> registry -> layout) knows
nothing of bundles or containers; bundle/ (layers -> rootfs, config.json)
nothing of running them; runtime/ (parent, child, network) uses both; cli/ sits
on top; linux/ holds every ctypes call.  Each third-party library has one
owner, so that `start` (which never talks to a registry) pays for none of
the heavy ones.  Imports inside functions count; `if TYPE_CHECKING:` ones do not.
"""

import ast
import os
from pathlib import Path

import pytest

import minict
from tests.support.procs import run_importing

PACKAGE = Path(minict.__file__).parent

# side -> the sides it may import (besides itself)
ALLOWED = {
    "common": {"linux"},
    "linux": set(),
    "image": {"common"},
    "bundle": {"common", "linux", "image"},
    "runtime": {"common", "linux", "bundle", "image"},
    "cli": {"common", "linux", "image", "bundle", "runtime"},
    "entry": {"cli"},
}
# library -> the one module (or package) that may import it
OWNERS = {
    "click": ("minict.cli.commands",),
    "requests": ("minict.image.http",),
    "urllib3": ("minict.image.http",),
    "pyroute2": ("minict.runtime.network",),
    "ctypes": ("minict.linux",),
}


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def side(module: str) -> str:
    parts = module.split(".")
    if module == "minict.__main__":
        return "entry"
    if len(parts) >= 2 and parts[1] in ALLOWED and parts[1] not in ("common", "entry"):
        return parts[1]
    return "common"


def _type_checking_only(tree: ast.Module) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every module `path` imports, anywhere in it: minict's by full name, others by top name."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return {name if name.startswith("minict") else name.split(".")[0] for name in found}


def import_graph(package: Path) -> dict[str, set[str]]:
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: imports_of(path, set(paths)) for name, path in paths.items()}


def wall_breaches(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            if other.startswith("minict."):
                here, there = side(module), side(other)
                if here != there and there not in ALLOWED[here] and other in graph:
                    found.append(f"{module} ({here}) imports {other} ({there})")
            elif other in OWNERS and not module.startswith(OWNERS[other]):
                found.append(f"{module} imports {other}, which only {OWNERS[other][0]} may")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph` (its strongly connected components with > 1 module)."""
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in graph:
                continue
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


def test_no_side_imports_across_its_walls():
    assert wall_breaches(import_graph(PACKAGE)) == []


def test_there_is_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_checks_see_a_breach_and_a_cycle(tmp_path):
    """The walls test is not vacuous: a planted breach, library import and cycle are found."""
    fake = tmp_path / "minict"
    for sub in ("image", "runtime", "linux"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "image" / "pull.py").write_text("def f():\n    from minict.runtime import launch\n")
    (fake / "runtime" / "launch.py").write_text("import ctypes\nfrom minict.runtime import init\n")
    (fake / "runtime" / "init.py").write_text("from minict.runtime import launch\n")
    (fake / "store.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from minict.image import pull\n")
    graph = import_graph(fake)
    assert wall_breaches(graph) == [
        "minict.image.pull (image) imports minict.runtime.launch (runtime)",
        "minict.runtime.launch imports ctypes, which only minict.linux may"]
    assert cycles(graph) == [["minict.runtime.init", "minict.runtime.launch"]]


def test_every_module_is_short_enough_to_read_in_one_sitting():
    # [design] asks for ~400 lines; past that, a module holds two concepts.
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


@pytest.mark.parametrize("argv", [["start", "--name", "no-such-container"],
                                  ["start", "--name=no-such-container"]])
def test_start_imports_no_registry_client_no_rich_and_no_click(argv, tmp_path):
    done, modules = run_importing(["-m", "minict", *argv], cwd=PACKAGE.parent,
                                  env={**os.environ, "MINICT_DIR": str(tmp_path / "minict")})
    imported = {module.split(".")[0] for module in modules}
    assert done.returncode == 1 and "does not exist" in done.stderr
    assert "minict" in imported
    assert not imported & {"requests", "urllib3", "rich", "click", "pyroute2"}
