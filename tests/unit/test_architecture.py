"""The layering of graphopt, checked from the source: every import (module level or inside a function)
of every module in graphopt/, passes/ and kernels/ is parsed; the test fails on an import cycle, on an
import that points up the layers, and on an import of another module's _private name."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = {"graphopt": ROOT / "graphopt", "graphopt.passes": ROOT / "passes", "graphopt.kernels": ROOT / "kernels"}

# Each subsystem imports only subsystems of a lower rank (and itself). The old-path shims and the
# package facade sit on top: nothing inside graphopt imports them.
RANKS = {
    "graphopt.errors": 0, "graphopt.version": 0,
    "graphopt.ir": 1, "graphopt.distributed": 1,  # executors: import only errors
    "graphopt.kernels": 2, "graphopt.verify": 2,
    "graphopt.compiler": 3, "graphopt.runtime": 3,
    "graphopt.passes": 4,
    "graphopt.pipeline": 5, "graphopt.lossy": 5,
    "graphopt.golden": 6, "graphopt.fleet": 6,
    "graphopt.cli": 7,
    "graphopt.rewrite": 8, "graphopt.pass_manager": 8, "graphopt.session": 8,  # old paths, one release
    "graphopt": 9, "graphopt.__main__": 9,
}


def module_files() -> dict[str, Path]:
    found = {}
    for prefix, folder in SOURCE.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            if prefix == "graphopt" and parts and parts[0] in ("passes", "kernels"):
                continue
            found[name] = path
    return found


MODULES = module_files()


def subsystem(module: str) -> str:
    for name in sorted(RANKS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    raise AssertionError(f"{module} belongs to no subsystem in RANKS: place it")


def imports_of(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("graphopt")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("graphopt"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (target, a.name, node.lineno))
    return found


def edges() -> list[tuple[str, str, str | None, int]]:
    out = []
    for module, path in MODULES.items():
        for target, name, line in imports_of(module, path):
            while target not in MODULES and "." in target:  # `import graphopt.kernels.cpu.x as y` etc.
                target = target.rpartition(".")[0]
            out.append((module, target, name, line))
    return out


EDGES = edges()


def test_every_module_is_placed_in_a_layer():
    for module in MODULES:
        subsystem(module)


def test_no_import_cycle():
    g = nx.DiGraph()
    g.add_edges_from((a, b) for a, b, _, _ in EDGES if a != b)
    cycles = list(nx.simple_cycles(g, length_bound=6))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_imports_point_down_the_layers():
    upward = [f"{a} -> {b} (line {line})" for a, b, _, line in EDGES
              if subsystem(a) != subsystem(b) and RANKS[subsystem(b)] >= RANKS[subsystem(a)]]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_no_module_imports_another_modules_private_name():
    bad = [f"{a} imports {name} from {b} (line {line})" for a, b, name, line in EDGES
           if name and name.startswith("_") and not name.startswith("__") and a != b]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_under_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


def test_the_check_sees_a_cycle_and_an_upward_import():
    """The checks above would fail on a reintroduced cycle: the graph they build holds the edges."""
    g = nx.DiGraph()
    g.add_edges_from((a, b) for a, b, _, _ in EDGES if a != b)
    assert g.has_edge("graphopt.runtime.session", "graphopt.runtime.plan")
    g.add_edge("graphopt.runtime.plan.build", "graphopt.runtime.session")  # what the old plan.py did
    assert list(nx.simple_cycles(g, length_bound=6))


def test_old_import_paths_still_work():
    from graphopt.ir import load, producer  # noqa: F401
    from graphopt.pass_manager import PassResult, register_pass, register_rules  # noqa: F401
    from graphopt.rewrite import Const, Op, Rule, Var, apply_rules, attr_value  # noqa: F401
    from graphopt.session import KernelFailed, Session  # noqa: F401
    import graphopt.compiler.rewrite
    import graphopt.runtime.session
    assert Rule is graphopt.compiler.rewrite.Rule and Session is graphopt.runtime.session.Session
