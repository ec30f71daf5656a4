"""DESIGN.md §2's layers, read from the source: the engine never imports the bundled core, the scenarios or
the CLI (they are its clients, like a user's training script), and module-level imports have no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# layer -> the layers it may never import (anywhere in a module, lazily inside a function too)
FORBIDDEN = {
    "engine": ("llava_doctor.core", "llava_doctor.reproduce", "llava_doctor.cli"),
    "core": ("llava_doctor.reproduce", "llava_doctor.cli"),
    "reproduce": ("llava_doctor.cli",),
    "cli": (),
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for the package and the built-in checks (shipped as llava_doctor.checks)."""
    out = {}
    for base, package in ((ROOT / "llava_doctor", "llava_doctor"), (ROOT / "checks", "llava_doctor.checks")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _layer(module: str) -> str:
    if module == "llava_doctor.__main__":  # `python -m llava_doctor`: the CLI's entry point
        return "cli"
    for layer in ("core", "reproduce", "cli"):
        if module == f"llava_doctor.{layer}" or module.startswith(f"llava_doctor.{layer}."):
            return layer
    return "engine"


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found += [(target, id(node) in top_level)] + [(n, id(node) in top_level) for n in names]
    return found


def test_the_scan_sees_every_layer():
    layers = {_layer(m) for m in _modules()}
    assert layers == {"engine", "core", "reproduce", "cli"}
    assert "llava_doctor.checks.ld301_trainable_policy" in _modules()


def test_no_layer_imports_a_layer_above_it():
    violations = []
    for module, path in sorted(_modules().items()):
        for target, _ in _imports(module, path):
            for forbidden in FORBIDDEN[_layer(module)]:
                if target == forbidden or target.startswith(forbidden + "."):
                    violations.append(f"{module} imports {target}")
    assert not violations, "\n".join(violations)


def find_cycles(graph: dict[str, list[str]]) -> list[str]:
    """Import cycles of `graph` (module -> modules it imports), each as "a -> b -> a". A package importing its
    own submodule (or the reverse) is how packages work, not a cycle to report."""
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    cycles.append(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_find_cycles_finds_a_cycle_and_ignores_package_structure():
    assert find_cycles({"p.a": ["p.b"], "p.b": ["p.c"], "p.c": ["p.a"]}) == ["p.a -> p.b -> p.c -> p.a"]
    assert find_cycles({"p": ["p.a"], "p.a": ["p"], "p.b": ["p.a"]}) == []


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    graph = {m: sorted({t for t, top in _imports(m, p) if top and t in modules and t != m}) for m, p in modules.items()}
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(cycles)
